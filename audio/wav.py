"""WAV files in and out of numpy arrays: numpy and soundfile only (no torch), so the API
process can use them for uploads."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf


def encode_wav(samples: npt.NDArray[Any], sample_rate: int) -> bytes:
    """Encode audio as a 16-bit PCM WAV file and return its bytes.

    ``samples`` is 1-D (n,) mono or 2-D channels-first (channels, n), e.g.
    ``GeneratedAudio.samples[i]``. Values are clipped to [-1, 1]; NaN becomes silence.
    """
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr.T  # soundfile wants (frames, channels)
    elif arr.ndim != 1:
        raise ValueError(f"expected 1-D or (channels, n) samples, got shape {arr.shape}")
    arr = np.clip(np.nan_to_num(arr), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, arr, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_info(data: bytes) -> tuple[int, float, int]:
    """Return (sample_rate, duration_s, channels) of encoded audio; ValueError if unreadable."""
    try:
        info = sf.info(io.BytesIO(data))
    except (RuntimeError, TypeError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise ValueError(f"not readable audio: {exc}") from exc
    return int(info.samplerate), info.frames / info.samplerate, int(info.channels)
