"""The signal processing of the fade stage, with no aimarket import (numpy and soundfile)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def fade_samples(samples: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float32]:
    """``samples`` (frames first: shape ``(n,)`` or ``(n, channels)``) with a linear fade-in
    over the first ``frames`` frames and a fade-out over the last ``frames``.

    The first and last frame become exactly 0 and the gain reaches 1 at ``frames``; a fade
    longer than half the clip is shortened to half, so the two never overlap. ``frames`` 0 (or
    a clip of one frame or none) returns an unchanged copy. The input is not modified.
    """
    import numpy as np

    out = np.array(samples, dtype=np.float32, copy=True)
    n = min(max(int(frames), 0), len(out) // 2)
    if n == 0:
        return out
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if out.ndim > 1:
        ramp = ramp[:, None]
    out[:n] *= ramp
    out[-n:] *= ramp[::-1]
    return out


def fade_wav(wav: bytes, seconds: float) -> tuple[bytes, int, float]:
    """Fade a WAV file in and out over ``seconds`` each (see :func:`fade_samples`).

    Keeps the channels, sample rate and sample format (16-bit PCM stays 16-bit PCM).
    Returns ``(wav, sample_rate, duration_s)``. Raises ``ValueError`` for a negative
    ``seconds`` and ``RuntimeError`` (soundfile's) for bytes that are not audio. Blocking and
    CPU-bound: call it from a thread in async code.
    """
    import soundfile as sf

    if seconds < 0:
        raise ValueError(f"the fade length must be 0 or more seconds, not {seconds}")
    info = sf.info(io.BytesIO(wav))
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    faded = fade_samples(samples, round(seconds * rate))
    out = io.BytesIO()
    sf.write(out, faded, rate, format="WAV", subtype=info.subtype)
    return out.getvalue(), int(rate), len(faded) / rate
