"""The visualize stage: a waveform and a spectrogram picture of each generated clip, stored
beside the audio as extra outputs so any client (not only the playground) can show them."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from actors.context import StageContext
from actors.registry import stage
from core.state import blob_key


def _pictures(wav: bytes) -> tuple[bytes, bytes]:
    import soundfile as sf

    from audio.render import spectrogram_png, waveform_png

    samples, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    channels_first = samples.T
    return waveform_png(channels_first, rate), spectrogram_png(channels_first, rate)


@stage("media.visualize", outputs=("media",))
async def visualize(ctx: StageContext, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Adds ``waveform`` and ``spectrogram`` PNG items after each audio item of ``previous``.

    A clip whose audio has already left the short-lived state (a redelivered message) passes
    through without pictures rather than failing the task.
    """
    task_id, stage_id = ctx.task_id, ctx.stage_id
    handoff = ctx.res.handoff
    media: list[dict[str, Any]] = []
    for index, item in enumerate((previous or {}).get("media", [])):
        media.append(item)
        if item.get("content_type") != "audio/wav":
            continue
        wav = await handoff.get(item["blob"])
        if wav is None:
            continue
        waveform, spectrogram = await asyncio.to_thread(_pictures, wav)
        for name, png in (("waveform", waveform), ("spectrogram", spectrogram)):
            key = blob_key(task_id, f"{stage_id}-{name}", index)
            ref = await handoff.put(key, png)
            media.append({"blob": ref, "name": name, "content_type": "image/png"})
    return {"media": media}
