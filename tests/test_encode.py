"""Output encoding (audio.encode): every format round-trips through libsndfile's decoders with
the right length, rate and channels, and loudness normalisation reaches its target without
clipping."""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pyloudnorm
import pytest
import soundfile as sf

from actors.store import EXTENSIONS, requested_encoding
from audio.encode import FORMATS, encode

CONTENT_TYPES = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg; codecs=opus",
    "mp3": "audio/mpeg",
}


def sine(
    rate: int, seconds: float, channels: int = 1, level: float = 0.5, freq: float = 440.0
) -> npt.NDArray[np.float32]:
    t = np.arange(round(rate * seconds)) / rate
    mono = level * np.sin(2 * np.pi * freq * t)
    # A second channel a fifth above, quieter, so the channels differ.
    cols = [mono, 0.5 * level * np.sin(2 * np.pi * freq * 1.5 * t)][:channels]
    return np.stack(cols, axis=1).astype(np.float32)


def wav_bytes(samples: npt.NDArray[np.float32], rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def decode(data: bytes) -> tuple[npt.NDArray[np.float64], int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    return samples, int(rate)


def test_format_table_is_the_documented_one() -> None:
    assert set(FORMATS) == set(CONTENT_TYPES)
    for fmt, spec in FORMATS.items():
        assert spec.content_type == CONTENT_TYPES[fmt]
        assert spec.extension == fmt
        assert EXTENSIONS[spec.content_type] == fmt  # the store stage's key extension


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("rate", [32000, 16000])
@pytest.mark.parametrize("channels", [1, 2])
def test_each_format_round_trips(fmt: str, rate: int, channels: int) -> None:
    encoded = encode(wav_bytes(sine(rate, 1.5, channels), rate), fmt)

    want_rate = 48000 if fmt == "opus" else rate
    assert encoded.content_type == CONTENT_TYPES[fmt]
    assert encoded.extension == fmt
    assert encoded.sample_rate == want_rate
    assert encoded.channels == channels
    assert encoded.duration_s == pytest.approx(1.5, abs=0.06)
    assert encoded.loudness_lufs_before is None
    assert encoded.gain_db == 0.0

    info = sf.info(io.BytesIO(encoded.data))
    assert info.samplerate == want_rate
    assert info.channels == channels
    samples, decoded_rate = decode(encoded.data)
    assert decoded_rate == want_rate
    assert samples.shape == (round(encoded.duration_s * want_rate), channels)
    assert samples.shape[0] / decoded_rate == pytest.approx(1.5, abs=0.06)
    # It is the same sound, not silence or noise: the level survives the codec.
    assert np.sqrt(np.mean(samples[:, 0] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_containers_are_what_they_claim() -> None:
    data = wav_bytes(sine(32000, 1.0), 32000)
    magic = {
        "wav": b"RIFF",
        "flac": b"fLaC",
        "ogg": b"OggS",
        "opus": b"OggS",
    }
    for fmt, head in magic.items():
        assert encode(data, fmt).data.startswith(head), fmt
    assert b"OpusHead" in encode(data, "opus").data[:64]
    assert b"vorbis" in encode(data, "ogg").data[:64]
    mp3 = encode(data, "mp3").data
    assert mp3.startswith(b"ID3") or mp3[0] == 0xFF  # an ID3 tag or an MPEG frame sync
    assert sf.info(io.BytesIO(mp3)).format == "MP3"


def test_wav_without_normalisation_is_passed_through() -> None:
    data = wav_bytes(sine(32000, 1.0, 2), 32000)
    assert encode(data, "wav").data == data


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize(("rate", "channels"), [(32000, 1), (16000, 2)])
@pytest.mark.parametrize("target", [-23.0, -14.0])
def test_normalisation_reaches_the_target(
    fmt: str, rate: int, channels: int, target: float
) -> None:
    encoded = encode(wav_bytes(sine(rate, 1.5, channels, level=0.05), rate), fmt, target)

    samples, decoded_rate = decode(encoded.data)
    measured = pyloudnorm.Meter(decoded_rate).integrated_loudness(samples)
    assert measured == pytest.approx(target, abs=0.5)
    assert encoded.loudness_lufs_after == pytest.approx(measured, abs=0.01)
    assert encoded.loudness_lufs_before is not None
    assert encoded.loudness_lufs_before < target  # a quiet clip was made louder
    assert encoded.gain_db == pytest.approx(target - encoded.loudness_lufs_before, abs=1e-6)
    assert not encoded.peak_limited
    assert encoded.notes == ()
    assert np.max(np.abs(samples)) <= 1.0
    assert encoded.duration_s == pytest.approx(1.5, abs=0.06)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_normalisation_never_clips(fmt: str) -> None:
    # A sine's peak is 3.7 dB above its loudness: at -2 LUFS it would peak at +1.7 dBTP, so
    # the gain stops at the -1 dBTP ceiling.
    encoded = encode(wav_bytes(sine(32000, 1.5, 1, level=0.3), 32000), fmt, -2.0)

    samples, _ = decode(encoded.data)
    assert encoded.peak_limited
    assert encoded.notes
    assert "true peak" in encoded.notes[0]
    assert np.max(np.abs(samples)) <= 1.0
    # The ceiling holds up to a codec's overshoot of a few tenths of a dB.
    assert 20 * np.log10(np.max(np.abs(samples))) <= -0.5
    assert encoded.loudness_lufs_after is not None
    assert encoded.loudness_lufs_after < -4.0  # quieter than asked rather than clipped


def test_a_cut_off_clip_does_not_ring_past_full_scale_as_opus() -> None:
    # libsndfile pads the last Opus packet with silence; without the fade-out this tone,
    # which stops mid-cycle, decodes with its last milliseconds ringing at +3 dBFS.
    rate = 48000
    t = np.arange(rate) / rate
    tone = (0.3 * np.cos(2 * np.pi * 1234.5 * t + 0.3)).astype(np.float32)[:, None]
    encoded = encode(wav_bytes(tone, rate), "opus", -4.7)
    samples, _ = decode(encoded.data)
    assert np.max(np.abs(samples)) <= 0.9
    assert samples.shape[0] == rate


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_clip_too_short_to_measure_is_not_normalised(fmt: str) -> None:
    rate = 32000
    encoded = encode(wav_bytes(sine(rate, 0.2), rate), fmt, -14.0)

    assert encoded.loudness_lufs_before is None
    assert encoded.loudness_lufs_after is None
    assert encoded.gain_db == 0.0
    assert not encoded.peak_limited
    assert len(encoded.notes) == 1
    assert "shorter than" in encoded.notes[0]
    assert encoded.duration_s == pytest.approx(0.2, abs=0.06)
    samples, _ = decode(encoded.data)
    assert np.max(np.abs(samples)) == pytest.approx(0.5, abs=0.1)  # level untouched


def test_silence_is_not_normalised() -> None:
    silence = np.zeros((32000, 1), dtype=np.float32)
    encoded = encode(wav_bytes(silence, 32000), "flac", -14.0)
    assert encoded.gain_db == 0.0
    assert encoded.notes == ("not normalised: the clip is silent",)


def test_unknown_format_and_garbage_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown audio format 'aac'"):
        encode(wav_bytes(sine(32000, 0.5), 32000), "aac")
    with pytest.raises(ValueError, match="not an audio file"):
        encode(b"not audio at all", "mp3")


def test_the_store_stage_reads_format_and_loudness_from_the_task_input() -> None:
    from core.errors import StageError

    assert requested_encoding({}) == ("wav", None)
    assert requested_encoding({"format": "mp3", "loudness_lufs": -16.0}) == ("mp3", -16.0)
    assert requested_encoding({"format": "opus", "loudness_lufs": 0.0}) == ("opus", None)
    assert requested_encoding({"format": "flac", "loudness_lufs": -14}) == ("flac", -14.0)
    with pytest.raises(StageError) as caught:
        requested_encoding({"format": "aac"})
    assert caught.value.code == "invalid_input"
