"""The store stage: encodes generated audio to the format the task asked for and moves it from
short-lived state into S3."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors.context import StageContext
from actors.registry import stage
from audio.encode import FORMATS, encode
from core.errors import StageError
from core.storage import media_key

log = logging.getLogger(__name__)

#: File extension of each content type a stage may produce.
EXTENSIONS = {
    **{spec.content_type: spec.extension for spec in FORMATS.values()},
    "image/png": "png",
    "application/json": "json",
}

#: What generation stages hand over; these items are encoded, everything else is stored as is.
GENERATED_AUDIO = "audio/wav"


def requested_encoding(inputs: dict[str, Any]) -> tuple[str, float | None]:
    """The task input's ``format`` (default ``wav``) and ``loudness_lufs`` (None, or 0, means
    no normalisation). Raises StageError for a format no encoder knows."""
    fmt = inputs.get("format") or "wav"
    if not isinstance(fmt, str) or fmt not in FORMATS:
        known = ", ".join(FORMATS)
        raise StageError("invalid_input", f"input.format: {fmt!r} is not one of {known}")
    target = inputs.get("loudness_lufs")
    if isinstance(target, bool) or not isinstance(target, int | float) or target == 0:
        return fmt, None
    return fmt, float(target)


@stage("media.store", outputs=("outputs",))
async def store(ctx: StageContext, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Uploads each generated item under a predictable key and returns its description.

    Generated audio (WAV) is first encoded to the task's ``format`` and, with
    ``loudness_lufs``, normalised (``audio.encode``); the description (content type,
    extension, duration, sample rate) is that of the encoded file. Pictures pass through.

    Safe to run twice: the key depends only on the task, the output and the format, so a
    rerun overwrites the same object; a redelivered message that finds the blob gone but the
    object in S3 describes the same key again instead of failing.
    """
    task_id, workflow = ctx.task_id, ctx.workflow
    res, task = ctx.res, await ctx.task_row()
    fmt, loudness = requested_encoding(task.input if task is not None else {})
    spec = FORMATS[fmt]
    default_name = next(iter(res.workflows[workflow].outputs), "audio")
    outputs = []
    counts: dict[str, int] = {}
    for item in (previous or {}).get("media", []):
        name = item.get("name") or default_name
        index = counts[name] = counts.get(name, -1) + 1
        audio = item["content_type"] == GENERATED_AUDIO
        content_type = spec.content_type if audio else item["content_type"]
        extension = EXTENSIONS.get(content_type, "bin")
        key = media_key(task_id, name, index, extension)
        duration = float(item["duration_s"]) if "duration_s" in item else None
        rate = int(item["sample_rate"]) if "sample_rate" in item else None
        extra: dict[str, Any] = {}
        data = await res.handoff.get(item["blob"])
        if data is not None:
            if audio:
                try:
                    encoded = await asyncio.to_thread(encode, data, fmt, loudness)
                except ValueError as exc:
                    raise StageError("encode_failed", f"{name}-{index}: {exc}") from None
                data = encoded.data
                duration, rate = encoded.duration_s, encoded.sample_rate
                if loudness is not None:
                    extra["loudness"] = {"target_lufs": loudness, **encoded.describe()}
                    for note in encoded.notes:
                        log.info("task %s %s-%d: %s", task_id, name, index, note)
            await asyncio.to_thread(res.store.put, key, data, content_type)
            size = len(data)
        else:
            found = await asyncio.to_thread(res.store.size, key)
            if found is None:
                raise StageError(
                    "media_lost", f"generated media of {task_id} expired before it was stored"
                )
            size = found
            if audio and spec.sample_rate is not None:
                rate = spec.sample_rate  # what the first run's encoder wrote
        outputs.append(
            {
                "name": name,
                "key": key,
                "content_type": content_type,
                "duration_s": round(duration, 3) if duration is not None else None,
                "sample_rate": rate,
                "size_bytes": size,
                **extra,
            }
        )
        await res.handoff.delete(item["blob"])
    if not outputs:
        raise StageError("no_output", "the generation stage produced no audio")
    return {"outputs": outputs}
