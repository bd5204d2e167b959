"""Pictures of generated audio for a web page: a waveform and a spectrogram, as PNG bytes.

What a caller must know:

* Everything here is pure numpy (plus zlib/struct for the PNG): no torch, no image library,
  so the API process can import it.
* ``samples`` is float audio shaped like ``encode_wav`` takes it: 1-D (n,) mono or 2-D
  channels-first (channels, n), e.g. ``GeneratedAudio.samples[i]``. Channels are averaged
  to mono, NaN/inf become silence, values are clipped to [-1, 1].
* Empty or very short audio never raises; it renders an (almost) empty picture of the
  requested size. ``width`` and ``height`` must be at least 1 (ValueError otherwise).
* Output is deterministic: the same input gives the same bytes.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

RGB = tuple[int, int, int]

#: Waveform colours: a light blue bar on the page's dark background, faint grey centre line.
WAVE_BACKGROUND: RGB = (0x11, 0x18, 0x27)
WAVE_FOREGROUND: RGB = (0x4F, 0xC3, 0xF7)
WAVE_CENTRE: RGB = (0x37, 0x41, 0x51)

#: Magma sampled at 8 evenly spaced points; near-black at 0 so silence reads as dark.
_MAGMA_ANCHORS = (
    (0x00, 0x00, 0x04),
    (0x22, 0x11, 0x50),
    (0x5F, 0x18, 0x7F),
    (0x98, 0x2D, 0x80),
    (0xD3, 0x43, 0x6E),
    (0xF8, 0x76, 0x5C),
    (0xFE, 0xBB, 0x81),
    (0xFC, 0xFD, 0xBF),
)

#: Spectrogram dynamic range: 0 dB is a full-scale sine, anything below -80 dB is black.
TOP_DB = 0.0
RANGE_DB = 80.0
MAX_N_FFT = 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(rgb: npt.NDArray[np.uint8]) -> bytes:
    """Encode a uint8 (height, width, 3) RGB array as PNG bytes (8-bit truecolour, no alpha)."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected uint8 (height, width, 3), got {arr.dtype} {arr.shape}")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"PNG needs at least 1x1 pixels, got {width}x{height}")
    # Each scanline is prefixed with filter type 0 (None); zlib does the compressing.
    rows = np.ascontiguousarray(arr).reshape(height, width * 3)
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), rows]).tobytes()
    # bit depth 8, colour type 2 (RGB), compression 0, filter 0, interlace 0
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _chunk(b"IHDR", ihdr),
            _chunk(b"IDAT", zlib.compress(raw, 6)),
            _chunk(b"IEND", b""),
        ]
    )


def waveform_png(
    samples: npt.NDArray[Any], sample_rate: int, width: int = 800, height: int = 160
) -> bytes:
    """Render a min/max waveform overview as PNG bytes of ``width`` x ``height`` pixels.

    Each pixel column is a vertical bar from the lowest to the highest sample of its slice of
    the audio (+1 at the top row, -1 at the bottom row). Columns of digital silence draw no
    bar, leaving only the faint centre line; any non-silent column draws at least one pixel.
    ``sample_rate`` is accepted for symmetry with :func:`spectrogram_png` and not used: the
    picture always spans the whole clip.
    """
    del sample_rate  # the x axis is "whole clip", so the rate does not change the picture
    _check_size(width, height)
    mono = _mono(samples)
    n = mono.size
    if n:
        # One slice per column; with fewer samples than columns neighbouring columns share a
        # sample (reduceat returns the start element for an empty slice), so nothing is blank.
        starts = (np.arange(width, dtype=np.int64) * n) // width
        lo = np.minimum.reduceat(mono, starts)
        hi = np.maximum.reduceat(mono, starts)
    else:
        lo = hi = np.zeros(width)
    # -1e-6 .. 1e-6 (-120 dBFS, below 24-bit quantisation) counts as silence.
    audible = np.maximum(np.abs(lo), np.abs(hi)) > 1e-6
    top = _amplitude_to_row(hi, height)
    bottom = _amplitude_to_row(lo, height)
    rows = np.arange(height)[:, None]
    bar = (rows >= top[None, :]) & (rows <= bottom[None, :]) & audible[None, :]

    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = WAVE_BACKGROUND
    # Centre row is where amplitude 0 lands, so a silent column's line sits under its bar.
    img[height // 2, :] = WAVE_CENTRE
    img[bar] = WAVE_FOREGROUND
    return encode_png(img)


def spectrogram_png(
    samples: npt.NDArray[Any], sample_rate: int, width: int = 800, height: int = 256
) -> bytes:
    """Render a linear-frequency magnitude spectrogram as PNG bytes of ``width`` x ``height``.

    x is time (one Hann-windowed FFT frame per pixel column, centred on the column's slice of
    the clip except at the edges, where frames stay inside the clip), y is frequency
    from 0 Hz at the bottom row to ``sample_rate / 2`` at the top. Colour is the magma map
    over -80..0 dB, where 0 dB is a full-scale sine: silence is black, loud bins are pale
    yellow, and a quiet clip looks dark rather than being normalised up. When several FFT
    bins share a pixel row the loudest wins, so narrow tones never vanish.
    """
    del sample_rate  # the axis is 0..Nyquist whatever the rate; kept for callers' symmetry
    _check_size(width, height)
    mono = _mono(samples)
    # Fewer than 2 samples is nothing to analyse: black says "no sound" better than an error.
    level = _stft_level(mono, width, height) if mono.size >= 2 else np.zeros((height, width))
    return encode_png(_colour(level))


def _stft_level(mono: npt.NDArray[np.float64], width: int, height: int) -> npt.NDArray[Any]:
    """(height, width) levels in 0..1 (0 = -80 dB or less), low frequencies in the last row."""
    n = mono.size
    # Largest power of two that fits the clip, capped, so short clips still get a spectrum.
    n_fft = min(MAX_N_FFT, 1 << (n.bit_length() - 1))
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann: the usual STFT window
    # Exactly one frame per column (hop = n / width, fractional), each centred on its
    # column's slice of the clip. Edge frames are shifted inside the clip rather than
    # zero-padded: padding would turn a clip that ends loud into a fake broadband click.
    centres = (np.arange(width) + 0.5) * (n / width)
    starts = np.clip(np.floor(centres - n_fft / 2).astype(np.int64), 0, n - n_fft)
    frames = mono[starts[:, None] + np.arange(n_fft)[None, :]] * window
    # Scale so a full-scale sine peaks at 1.0 (0 dB) whatever n_fft is.
    mag = np.abs(np.fft.rfft(frames, axis=1)) * (2.0 / window.sum())
    db = 20.0 * np.log10(np.maximum(mag, 1e-12))
    level = (np.clip(db, TOP_DB - RANGE_DB, TOP_DB) - (TOP_DB - RANGE_DB)) / RANGE_DB

    n_bins = level.shape[1]
    # Row j (from the bottom) covers bins [row_starts[j], row_starts[j+1]); max-pool when squeezing
    # bins into fewer rows, repeat the nearest bin when stretching.
    row_starts = (np.arange(height, dtype=np.int64) * n_bins) // height
    per_row = np.maximum.reduceat(level, row_starts, axis=1)  # (width, height)
    return per_row.T[::-1]  # image rows run top-down, so flip to put 0 Hz at the bottom


def _colour(level: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Map levels in 0..1 to magma RGB through a 256-entry LUT."""
    anchors = np.asarray(_MAGMA_ANCHORS, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(anchors))
    grid = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(grid, xs, anchors[:, c]) for c in range(3)], axis=1)
    lut_u8 = np.rint(lut).astype(np.uint8)
    idx = np.rint(np.clip(level, 0.0, 1.0) * 255).astype(np.intp)
    out: npt.NDArray[np.uint8] = lut_u8[idx]
    return out


def _mono(samples: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr.mean(axis=0) if arr.shape[0] else np.zeros(arr.shape[1])
    elif arr.ndim != 1:
        raise ValueError(f"expected 1-D or (channels, n) samples, got shape {arr.shape}")
    return np.clip(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)


def _amplitude_to_row(value: npt.NDArray[Any], height: int) -> npt.NDArray[np.int64]:
    # +1 -> row 0, -1 -> last row; floor(x + 0.5) rounds halves down the picture so 0 lands
    # on row height // 2, the centre line, for odd and even heights alike.
    y = (1.0 - value) * ((height - 1) / 2.0)
    return np.floor(y + 0.5).astype(np.int64)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1, got {width}x{height}")


def _chunk(kind: bytes, data: bytes) -> bytes:
    # A chunk's CRC covers its type and data, not its length.
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
