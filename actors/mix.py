"""The mix stage: several generated clips into one track, each at its own level."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import numpy.typing as npt

from actors.context import StageContext
from actors.dag import current_item
from actors.registry import stage
from core.errors import StageError
from core.state import blob_key


def mix_wavs(wavs: list[bytes], levels: list[float]) -> tuple[bytes, int, float]:
    """Mix WAV files at ``levels`` (0..1 each) into one mono WAV at the highest sample rate.

    Clips at a lower rate are resampled (polyphase, scipy), shorter ones padded with silence;
    the sum is scaled down only if it would clip. Returns (wav, sample_rate, duration_s).
    """
    import soundfile as sf
    from scipy.signal import resample_poly

    clips: list[tuple[npt.NDArray[np.float32], int]] = []
    for data in wavs:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        clips.append((samples.mean(axis=1), int(rate)))
    rate = max(r for _, r in clips)
    tracks = []
    for (samples, clip_rate), level in zip(clips, levels, strict=True):
        if clip_rate != rate:
            g = np.gcd(rate, clip_rate)
            samples = resample_poly(samples, rate // g, clip_rate // g).astype(np.float32)
        tracks.append(samples * float(level))
    length = max(len(t) for t in tracks)
    mixed = np.zeros(length, dtype=np.float32)
    for track in tracks:
        mixed[: len(track)] += track
    peak = float(np.abs(mixed).max()) if length else 0.0
    if peak > 1.0:
        mixed /= peak
    out = io.BytesIO()
    sf.write(out, mixed, rate, format="WAV", subtype="PCM_16")
    return out.getvalue(), rate, length / rate


@stage("audio.mix", outputs=("media",))
async def mix(ctx: StageContext, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Input ``tracks`` (media items of earlier stages) and ``levels`` (one per track, 0..1);
    output ``media``: the one mixed clip."""
    task_id, stage_id = ctx.task_id, ctx.stage_id
    tracks = list((given or {}).get("tracks") or [])
    levels = [float(x) for x in (given or {}).get("levels") or [1.0] * len(tracks)]
    if not tracks or len(levels) != len(tracks):
        raise StageError("invalid_mix", "mix needs tracks and one level per track")
    handoff = ctx.res.handoff
    wavs = []
    for track in tracks:
        data = await handoff.get(track["blob"])
        if data is None:
            raise StageError("media_lost", f"track {track['blob']} expired before the mix")
        wavs.append(data)
    wav, rate, duration = await asyncio.to_thread(mix_wavs, wavs, levels)
    item = current_item()
    key = blob_key(task_id, stage_id if item < 0 else f"{stage_id}.{item}", 0)
    ref = await handoff.put(key, wav)
    return {
        "media": [
            {"blob": ref, "content_type": "audio/wav", "sample_rate": rate, "duration_s": duration}
        ]
    }
