"""The waveform and spectrogram pictures: valid PNGs of the asked size that show the sound.

Each PNG is decoded by the small reader below (chunks, CRCs, inflate, filter 0), so the tests
check the encoder's bytes as well as the pixels the renderers drew.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from audio.render import (
    WAVE_BACKGROUND,
    WAVE_CENTRE,
    WAVE_FOREGROUND,
    encode_png,
    spectrogram_png,
    waveform_png,
)

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_png(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB, non-interlaced PNG whose rows all use filter 0; assert validity."""
    assert data[:8] == SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC on {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [k for k, _ in chunks]
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    assert chunks[-1][1] == b""
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * 3)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, 1 + width * 3)
    assert (rows[:, 0] == 0).all(), "every scanline should use filter 0"
    return rows[:, 1:].reshape(height, width, 3)


def sine(freq: float, sr: int, seconds: float, amp: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_encode_png_round_trips_pixels() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(img)), img)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8)])
def test_encode_png_rejects_wrong_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(bad)


@pytest.mark.parametrize(("width", "height"), [(800, 160), (123, 45), (1, 1)])
def test_waveform_size(width: int, height: int) -> None:
    img = decode_png(waveform_png(sine(440, 16000, 0.5), 16000, width=width, height=height))
    assert img.shape == (height, width, 3)


@pytest.mark.parametrize(("width", "height"), [(800, 256), (321, 77), (1, 1)])
def test_spectrogram_size(width: int, height: int) -> None:
    img = decode_png(spectrogram_png(sine(440, 16000, 0.5), 16000, width=width, height=height))
    assert img.shape == (height, width, 3)


@pytest.mark.parametrize("height", [160, 161])
def test_waveform_of_silence_is_background_and_centre_line(height: int) -> None:
    img = decode_png(waveform_png(np.zeros(16000, np.float32), 16000, height=height))
    expected = np.empty_like(img)
    expected[:] = WAVE_BACKGROUND
    expected[height // 2] = WAVE_CENTRE
    assert np.array_equal(img, expected)


def test_waveform_of_full_scale_sine_reaches_top_and_bottom() -> None:
    img = decode_png(waveform_png(sine(440, 16000, 3.0), 16000))
    fg = np.all(img == WAVE_FOREGROUND, axis=2)
    # 48000 samples / 800 columns = 60 samples a column, over one and a half 440 Hz cycles,
    # so every column holds a crest (row 0) and a trough (last row).
    assert fg[0].mean() > 0.9
    assert fg[-1].mean() > 0.9
    assert fg.mean() > 0.9


def test_waveform_bar_height_follows_amplitude() -> None:
    img = decode_png(waveform_png(sine(440, 16000, 1.0, amp=0.5), 16000, height=161))
    fg = np.all(img == WAVE_FOREGROUND, axis=2)
    lit_rows = np.flatnonzero(fg.any(axis=1))
    # +0.5 lands on row 40, -0.5 on row 120 of 0..160.
    assert abs(lit_rows.min() - 40) <= 1
    assert abs(lit_rows.max() - 120) <= 1


def test_waveform_clips_and_survives_nan() -> None:
    x = sine(440, 16000, 3.0, amp=3.0)
    x[::7] = np.nan
    img = decode_png(waveform_png(x, 16000, height=50))
    assert img.shape == (50, 800, 3)
    fg = np.all(img == WAVE_FOREGROUND, axis=2)
    assert fg[0].mean() > 0.9
    assert fg[-1].mean() > 0.9


def test_spectrogram_of_1khz_sine_is_brightest_at_1khz() -> None:
    sr, height = 16000, 256
    img = decode_png(spectrogram_png(sine(1000, sr, 2.0, amp=0.5), sr, height=height))
    brightness = img.astype(np.float64).sum(axis=2)
    row_mean = brightness.mean(axis=1)
    # Row 0 is Nyquist (8 kHz), the last row is 0 Hz: 1 kHz is 1/8 of the way up.
    expected = (height - 1) - round(1000 / (sr / 2) * (height - 1))
    peak = int(np.argmax(row_mean))
    assert abs(peak - expected) <= 3
    far = np.abs(np.arange(height) - expected) > 10
    assert row_mean[far].max() < 0.25 * row_mean[peak]
    # Every column (time frame) shows the tone at the same row, and nothing far from it: the
    # clip stops at full level, which must not paint a broadband click in the edge columns.
    assert (np.abs(np.argmax(brightness, axis=0) - expected) <= 3).all()
    assert brightness[far].max() < 0.25 * brightness.max()


def test_spectrogram_of_silence_is_dark() -> None:
    img = decode_png(spectrogram_png(np.zeros(16000, np.float32), 16000, width=64, height=32))
    assert img.max() < 16


def test_spectrogram_is_brighter_for_louder_sound() -> None:
    loud = decode_png(spectrogram_png(sine(1000, 16000, 1.0, amp=1.0), 16000)).sum()
    quiet = decode_png(spectrogram_png(sine(1000, 16000, 1.0, amp=0.01), 16000)).sum()
    assert loud > quiet


def test_stereo_input_works() -> None:
    left = sine(1000, 16000, 1.0, amp=0.5)
    stereo = np.stack([left, left])
    assert waveform_png(stereo, 16000) == waveform_png(left, 16000)
    assert decode_png(spectrogram_png(stereo, 16000)).shape == (256, 800, 3)
    # Opposite channels cancel in the mono mix: a silent picture, not a crash.
    cancelled = decode_png(waveform_png(np.stack([left, -left]), 16000))
    assert not np.all(cancelled == WAVE_FOREGROUND, axis=2).any()


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 799])
def test_short_and_empty_input_give_valid_pngs(n: int) -> None:
    x = sine(1000, 16000, 1.0)[:n]
    assert decode_png(waveform_png(x, 16000)).shape == (160, 800, 3)
    assert decode_png(spectrogram_png(x, 16000)).shape == (256, 800, 3)
    assert decode_png(waveform_png(np.zeros((2, n), np.float32), 16000)).shape == (160, 800, 3)
    assert decode_png(spectrogram_png(np.zeros((2, n), np.float32), 16000)).shape == (256, 800, 3)


def test_short_input_still_draws_every_column() -> None:
    img = decode_png(waveform_png(np.full(10, 0.5, np.float32), 16000, width=100))
    fg = np.all(img == WAVE_FOREGROUND, axis=2)
    assert fg.any(axis=0).all()


def test_output_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(2, 24000)).astype(np.float32)
    assert waveform_png(x, 16000) == waveform_png(x.copy(), 16000)
    assert spectrogram_png(x, 16000) == spectrogram_png(x.copy(), 16000)


@pytest.mark.parametrize("render", [waveform_png, spectrogram_png])
def test_bad_arguments_raise_value_error(render: object) -> None:
    assert callable(render)
    with pytest.raises(ValueError, match="width and height"):
        render(np.zeros(100, np.float32), 16000, width=0)
    with pytest.raises(ValueError, match="samples"):
        render(np.zeros((1, 2, 100), np.float32), 16000)
