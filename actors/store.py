"""The store stage: moves generated audio from short-lived state into S3."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.errors import StageError
from actors.registry import stage
from actors.resources import resources
from aimarket.storage import media_key

#: File extension of each content type a stage may produce.
EXTENSIONS = {
    "audio/wav": "wav",
    "audio/flac": "flac",
    "audio/ogg": "ogg",
    "audio/mpeg": "mp3",
    "image/png": "png",
    "application/json": "json",
}


@stage("media.store", outputs=("outputs",))
async def store(
    task_id: str, workflow: str, stage_id: str, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Uploads each generated item under a predictable key and returns its description.

    Safe to run twice: a redelivered message finds the blob gone but the object in S3,
    and describes the same key again instead of failing.
    """
    res = resources()
    default_name = next(iter(res.workflows[workflow].outputs), "audio")
    outputs = []
    counts: dict[str, int] = {}
    for item in (previous or {}).get("media", []):
        name = item.get("name") or default_name
        index = counts[name] = counts.get(name, -1) + 1
        extension = EXTENSIONS.get(item["content_type"], "bin")
        key = media_key(task_id, name, index, extension)
        data = await res.state.get_blob(item["blob"])
        if data is not None:
            await asyncio.to_thread(res.store.put, key, data, item["content_type"])
            size = len(data)
        else:
            found = await asyncio.to_thread(res.store.size, key)
            if found is None:
                raise StageError(
                    "media_lost", f"generated media of {task_id} expired before it was stored"
                )
            size = found
        outputs.append(
            {
                "name": name,
                "key": key,
                "content_type": item["content_type"],
                "duration_s": round(float(item["duration_s"]), 3) if "duration_s" in item else None,
                "sample_rate": int(item["sample_rate"]) if "sample_rate" in item else None,
                "size_bytes": size,
            }
        )
        await res.state.delete_blob(item["blob"])
    if not outputs:
        raise StageError("no_output", "the generation stage produced no audio")
    return {"outputs": outputs}
