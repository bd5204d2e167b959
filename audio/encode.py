"""Output encoding: a generated WAV to the format a client asked for, optionally normalised to
a target loudness.

Every encoder is libsndfile's own (through ``soundfile``): PCM WAV, FLAC, Ogg Vorbis, Ogg Opus
(libopus) and MP3 (LAME; decoded with mpg123). The sample rate stays the one the model
generated, except for Opus, which only knows 8, 12, 16, 24 and 48 kHz and always decodes at
48 kHz: Opus output is resampled to 48 kHz (polyphase, ``scipy.signal.resample_poly``).

Loudness is ITU-R BS.1770-4 integrated loudness (``pyloudnorm``). Normalising applies one gain
to the whole clip; if that gain would push the true peak (4x oversampled, as BS.1770-4 annex 2
measures it) above -1 dBTP, the gain is lowered to land exactly there and the result says so
(``peak_limited``): the clip is then quieter than the target rather than clipped. Lossy codecs
can still overshoot that ceiling, so a normalised file is decoded back and, should it pass full
scale, encoded again with less gain. Clips shorter than one 400 ms gating block cannot be
measured and are left as they are (``notes`` says so).

libsndfile pads the last Opus packet with silence, which makes a clip that stops abruptly ring
(up to several times its level) in its last milliseconds; Opus output therefore gets a 10 ms
fade-out.

What is reported (duration, sample rate, loudness after) is measured on the encoded file
decoded back, i.e. on what the client gets. MP3 encoders add a delay and pad the last frame;
libsndfile writes the LAME/Xing tag that gapless decoders (mpg123, ffmpeg, most players) use
to trim it, so the decoded length is the generated one (the tests check it). A decoder that
ignores the tag plays a few tens of milliseconds more silence (35-70 ms at 32 kHz).

numpy is the only import at module load; soundfile, scipy and pyloudnorm are imported by the
functions that use them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMATS",
    "PEAK_CEILING_DBTP",
    "AudioFormat",
    "Encoded",
    "encode",
    "true_peak_dbtp",
]

Samples = npt.NDArray[np.float32]

#: The highest true peak normalisation may produce (the usual streaming ceiling; it leaves
#: room for the overshoot of lossy codecs).
PEAK_CEILING_DBTP = -1.0
#: BS.1770 gating blocks are 400 ms: anything shorter has no integrated loudness.
MIN_LOUDNESS_S = 0.4
#: Opus only encodes at 8/12/16/24/48 kHz and decoders always give 48 kHz.
OPUS_RATE = 48_000


@dataclass(frozen=True)
class AudioFormat:
    """How one output format is written with libsndfile."""

    content_type: str
    extension: str
    #: soundfile's ``format`` and ``subtype``.
    container: str
    subtype: str
    #: libsndfile's compression level (0 best quality .. 1 smallest), None for its default.
    compression_level: float | None = None
    bitrate_mode: Literal["CONSTANT", "AVERAGE", "VARIABLE"] | None = None
    #: The one sample rate the format is written at, None to keep the generated rate.
    sample_rate: int | None = None


#: Every output format by the name a request uses (the workflows' ``format`` input).
FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("audio/wav", "wav", "WAV", "PCM_16"),
    "flac": AudioFormat("audio/flac", "flac", "FLAC", "PCM_16"),
    # Vorbis quality is variable-bitrate; 0.4 is about -q 6 (~160 kb/s stereo music).
    "ogg": AudioFormat("audio/ogg", "ogg", "OGG", "VORBIS", compression_level=0.4),
    # RFC 7845: Ogg Opus files are audio/ogg; the codecs parameter tells them from Vorbis.
    # libopus's own bitrate (~64 kb/s mono, ~120 kb/s stereo at 48 kHz).
    "opus": AudioFormat("audio/ogg; codecs=opus", "opus", "OGG", "OPUS", sample_rate=OPUS_RATE),
    # LAME VBR at compression 0.2, i.e. -V 2 (the "standard" preset, ~170-210 kb/s music).
    "mp3": AudioFormat(
        "audio/mpeg",
        "mp3",
        "MP3",
        "MPEG_LAYER_III",
        compression_level=0.2,
        bitrate_mode="VARIABLE",
    ),
}


@dataclass(frozen=True)
class Encoded:
    """An encoded clip and what a client is told about it (all measured on ``data``)."""

    data: bytes
    format: str
    content_type: str
    extension: str
    sample_rate: int
    channels: int
    duration_s: float
    #: Integrated loudness (LUFS) before and after normalisation; None when none was asked
    #: for or the clip could not be measured (too short, silent).
    loudness_lufs_before: float | None = None
    loudness_lufs_after: float | None = None
    #: The gain applied, in dB (0 when not normalised).
    gain_db: float = 0.0
    #: True when the gain was lowered to keep the true peak at PEAK_CEILING_DBTP.
    peak_limited: bool = False
    #: Why normalisation was skipped or limited, in words.
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """The loudness part of the result, for a stored output's description."""
        return {
            "loudness_lufs_before": _round(self.loudness_lufs_before),
            "loudness_lufs_after": _round(self.loudness_lufs_after),
            "gain_db": round(self.gain_db, 2),
            "peak_limited": self.peak_limited,
            "notes": list(self.notes),
        }


def encode(wav: bytes, fmt: str, loudness_lufs: float | None = None) -> Encoded:
    """Encode the audio file ``wav`` (any format libsndfile reads) as ``fmt`` (a FORMATS key).

    With ``loudness_lufs``, first apply the one gain that brings the integrated loudness to
    that target, lowered if needed so the true peak stays at or below -1 dBTP and the decoded
    file never passes full scale. Mono and multi-channel audio keep their channels. Opus is
    resampled to 48 kHz (and faded out over its last 10 ms); every other format keeps the
    input's rate. A WAV asked for as WAV without normalisation is returned as it
    is. CPU-bound (tenths of a second for 30 s of audio): run it in a thread.

    Raises ValueError for an unknown ``fmt`` and for input that is not audio.
    """
    spec = _format(fmt)
    samples, rate = _read(wav)
    notes: list[str] = []
    before: float | None = None
    gain_db = 0.0
    limited = False

    if loudness_lufs is not None:
        before, gain_db, limited, note = _normalising_gain(samples, rate, loudness_lufs)
        if note:
            notes.append(note)

    # Lossy codecs overshoot a little; when this call sets the level, check what a client
    # decodes and, should it pass full scale, lower the gain and encode again.
    for _ in range(_MAX_ATTEMPTS):
        data = _write(wav, samples, rate, fmt, spec, gain_db)
        decoded, decoded_rate = _read(data)
        peak = float(np.max(np.abs(decoded))) if decoded.size else 0.0
        if before is None or peak <= 1.0:
            break
        excess = 20.0 * math.log10(peak) - PEAK_CEILING_DBTP
        notes.append(
            f"gain lowered by {excess:.2f} dB: the encoded {fmt} peaked at "
            f"{20.0 * math.log10(peak):+.2f} dBFS"
        )
        gain_db -= excess
        limited = True

    after: float | None = None
    if before is not None:
        after = _loudness(decoded, decoded_rate)
    return Encoded(
        data=data,
        format=fmt,
        content_type=spec.content_type,
        extension=spec.extension,
        sample_rate=decoded_rate,
        channels=int(decoded.shape[1]),
        duration_s=decoded.shape[0] / decoded_rate,
        loudness_lufs_before=before,
        loudness_lufs_after=after,
        gain_db=gain_db,
        peak_limited=limited,
        notes=tuple(notes),
    )


def true_peak_dbtp(samples: Samples, rate: int) -> float:
    """The true peak (dBTP) of (frames, channels) ``samples``: the sample peak of the signal
    oversampled 4x (BS.1770-4 annex 2; below 96 kHz). -inf for silence."""
    from scipy.signal import resample_poly

    if samples.size == 0:
        return -math.inf
    factor = 4 if rate < 96_000 else 2
    over = resample_poly(samples.astype(np.float64), factor, 1, axis=0)
    peak = max(float(np.max(np.abs(over))), float(np.max(np.abs(samples))))
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


# --- helpers --------------------------------------------------------------------------------

#: Encodes tried at most when the decoded result still passes full scale.
_MAX_ATTEMPTS = 3
#: libsndfile pads the last Opus packet with silence (and shortens it): a clip that stops
#: short rings loudly in that last packet. A 10 ms fade-out to silence avoids it.
_OPUS_FADE_S = 0.010


def _write(
    original: bytes, samples: Samples, rate: int, fmt: str, spec: AudioFormat, gain_db: float
) -> bytes:
    """The encoded file of ``samples`` with ``gain_db`` applied (``original`` itself for a
    WAV asked for as WAV at unity gain)."""
    import soundfile as sf

    if fmt == "wav" and gain_db == 0.0 and _is_wav(original):
        return original
    if gain_db != 0.0:
        samples = samples * np.float32(10.0 ** (gain_db / 20.0))
    out_rate = spec.sample_rate or rate
    if out_rate != rate:
        samples = _resample(samples, rate, out_rate)
    if spec.subtype == "OPUS":
        samples = _fade_out(samples, int(_OPUS_FADE_S * out_rate))
    # Float samples past full scale would wrap in integer formats; clip them.
    samples = np.clip(samples, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(
        buf,
        samples,
        out_rate,
        format=spec.container,
        subtype=spec.subtype,
        compression_level=spec.compression_level,
        bitrate_mode=spec.bitrate_mode,
    )
    return buf.getvalue()


def _fade_out(samples: Samples, frames: int) -> Samples:
    frames = min(frames, samples.shape[0])
    if frames <= 1:
        return samples
    ramp = (0.5 + 0.5 * np.cos(np.linspace(0.0, np.pi, frames))).astype(np.float32)
    out = samples.copy()
    out[-frames:] *= ramp[:, None]
    return out


def _format(fmt: str) -> AudioFormat:
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ValueError(f"unknown audio format {fmt!r}; known: {', '.join(FORMATS)}")
    return spec


def _read(data: bytes) -> tuple[Samples, int]:
    """(frames, channels) float32 samples and the sample rate of an audio file's bytes."""
    import soundfile as sf

    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"not an audio file libsndfile can read: {exc}") from None
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate)


def _is_wav(data: bytes) -> bool:
    return data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE"


def _loudness(samples: Samples, rate: int) -> float | None:
    """Integrated loudness in LUFS; None for a clip shorter than a gating block or silence."""
    import pyloudnorm  # type: ignore[import-untyped, unused-ignore]

    if samples.shape[0] < math.ceil(MIN_LOUDNESS_S * rate) or samples.shape[1] > 5:
        return None
    value = float(pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64)))
    return value if math.isfinite(value) else None


def _normalising_gain(
    samples: Samples, rate: int, target: float
) -> tuple[float | None, float, bool, str | None]:
    """(loudness before, gain in dB, whether the peak ceiling lowered it, note)."""
    duration = samples.shape[0] / rate if rate else 0.0
    if samples.shape[0] < math.ceil(MIN_LOUDNESS_S * rate):
        return (
            None,
            0.0,
            False,
            f"not normalised: {duration:.2f} s is shorter than the {MIN_LOUDNESS_S:g} s "
            "that loudness measurement (ITU-R BS.1770) needs",
        )
    if samples.shape[1] > 5:
        return None, 0.0, False, "not normalised: BS.1770 loudness covers at most 5 channels"
    before = _loudness(samples, rate)
    if before is None:
        return None, 0.0, False, "not normalised: the clip is silent"
    gain = target - before
    peak = true_peak_dbtp(samples, rate)
    if math.isfinite(peak) and peak + gain > PEAK_CEILING_DBTP:
        limited_gain = PEAK_CEILING_DBTP - peak
        note = (
            f"gain lowered from {gain:+.2f} dB to {limited_gain:+.2f} dB to keep the true peak "
            f"at {PEAK_CEILING_DBTP:g} dBTP; loudness is below the {target:g} LUFS target"
        )
        return before, limited_gain, True, note
    return before, gain, False, None


def _resample(samples: Samples, rate: int, to: int) -> Samples:
    from scipy.signal import resample_poly

    g = math.gcd(rate, to)
    out = resample_poly(samples, to // g, rate // g, axis=0)
    return np.ascontiguousarray(out, dtype=np.float32)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
