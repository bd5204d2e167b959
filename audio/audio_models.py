"""Model layer of the generation workers: load MusicGen/AudioGen once, generate, encode WAV.

What a caller must know:

* Importing this module is cheap: torch and audiocraft are imported inside the functions
  that need them, because the API process imports the ``actors`` package and must never
  import torch.
* ``name_or_dir`` is what the settings hold (``MUSIC_GEN_MODEL`` / ``AUDIO_GEN_MODEL``): a
  hub name such as ``facebook/musicgen-small`` or a local checkpoint directory holding
  ``state_dict.bin`` and ``compression_state_dict.bin`` (see ``audio.random_models``).
* Every failure to load raises :class:`ModelLoadError`, whose message names the setting
  value; map it to the task error code ``model_unavailable``.
* Models are cached per process, one per (kind, name_or_dir, resolved device, precision);
  a model is used by one generation at a time. ``seed`` makes a generation reproducible as
  long as no other thread of the process draws from torch's global RNG meanwhile.
* Call :func:`configure_cache` and :func:`set_precision` before the first load.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import numpy.typing as npt

# Re-exported (`X as X`): callers catch audio_models.ModelLoadError wherever they generate.
from audio.checkpoints import ModelKind as ModelKind
from audio.checkpoints import ModelLoadError as ModelLoadError
from audio.checkpoints import load_checkpoint
from audio.precision import PRECISIONS, Precision, PrecisionUnsupported, apply_precision
from audio.wav import encode_wav as encode_wav
from audio.wav import wav_info as wav_info

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratedAudio:
    """Output of :func:`generate`.

    ``samples`` is float32 in [-1, 1] with shape (batch, channels, n): one row per prompt,
    in prompt order. ``samples[i]`` can be passed to :func:`encode_wav` as is.
    """

    samples: npt.NDArray[np.float32]
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return int(self.samples.shape[-1]) / self.sample_rate


@dataclass
class _Entry:
    model: Any
    # set_generation_params() mutates the model, so one generation per model at a time.
    lock: threading.Lock


#: Loaded models, least recently used first. Bounded: a pool serving several variants
#: (small, medium, melody...) keeps the most used in memory instead of all of them.
#: Keyed by (kind, name_or_dir, device, precision).
_MODELS: OrderedDict[tuple[str, str, str, str], _Entry] = OrderedDict()
_max_models = 2
_precision: Precision = "auto"
# One lock for all loads: loads are rare and heavy, and the weights_only fallback swaps a
# function of audiocraft's loader module, which must not happen under a concurrent load.
_LOAD_LOCK = threading.Lock()


def configure_cache(cache_dir: str | None) -> None:
    """Point the hub caches at ``cache_dir`` (no-op when None or empty).

    Sets ``HF_HOME`` (T5 text encoders, EnCodec codecs fetched through transformers) and
    ``AUDIOCRAFT_CACHE_DIR`` (the audiocraft checkpoints) so both share ``cache_dir/hub``.
    huggingface_hub reads ``HF_HOME`` once, at import: call this before the first load.
    """
    if not cache_dir:
        return
    root = Path(cache_dir).expanduser()
    if "huggingface_hub" in sys.modules and os.environ.get("HF_HOME") != str(root):
        log.warning(
            "huggingface_hub is already imported; HF_HOME=%s only applies to audiocraft "
            "checkpoints in this process",
            root,
        )
    os.environ["HF_HOME"] = str(root)
    os.environ["AUDIOCRAFT_CACHE_DIR"] = str(root / "hub")


def resolve_device(pref: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values pass through.

    Raises :class:`ModelLoadError` when a CUDA device is asked for and none is available.
    """
    pref = pref.strip().lower()
    if pref == "cpu":
        return pref
    import torch

    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {pref!r} requested but CUDA is not available")
    return pref


def load_model(kind: ModelKind, name_or_dir: str, device: str = "auto") -> Any:
    """Return the cached MusicGen/AudioGen model, loading it on first use (thread-safe).

    Raises :class:`ModelLoadError` for a missing directory, a missing checkpoint file, an
    unknown or unreachable hub name, or a checkpoint that does not load.
    """
    return _entry(kind, name_or_dir, device).model


def clear_model_cache() -> None:
    """Forget every cached model (tests; freeing GPU memory)."""
    with _LOAD_LOCK:
        _MODELS.clear()


def set_cache_size(size: int) -> None:
    """How many models a process keeps loaded (MODEL_CACHE_SIZE); extra ones are evicted,
    least recently used first, when the next one loads."""
    global _max_models
    _max_models = max(1, size)


def set_precision(precision: str) -> None:
    """The precision the next loads use (MODEL_PRECISION); models already loaded keep theirs.
    Raises ValueError for a name not in :data:`PRECISIONS`."""
    global _precision
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    _precision = precision


def cached_models() -> list[tuple[str, str, str]]:
    """(kind, name, device) of the loaded models, least recently used first."""
    return [key[:3] for key in _MODELS]


def _evict_over(limit: int) -> None:
    # Called with _LOAD_LOCK held. Waits for a model's running generation (its lock) so a
    # model is never dropped under a request; then frees what it held on the GPU.
    while len(_MODELS) > limit:
        key, entry = next(iter(_MODELS.items()))
        with entry.lock:
            del _MODELS[key]
        log.info("evicted %s model %r from %s (cache holds %d)", *key, limit)
        if key[2].startswith("cuda"):
            # The entry held the last reference: drop it, so that its CUDA tensors are freed
            # before their blocks are handed back to the driver.
            del entry
            release_memory()


#: audiocraft's own defaults for the sampling settings a request may change.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "top_k": 250,
    "top_p": 0.0,
    "temperature": 1.0,
    "cfg_coef": 3.0,
}


def generate(
    kind: ModelKind,
    name_or_dir: str,
    prompts: list[str],
    duration: float,
    device: str = "auto",
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: Mapping[str, Any] | None = None,
) -> GeneratedAudio:
    """Generate ``duration`` seconds of audio for each prompt in one batch.

    Loads the model if needed (so it may raise :class:`ModelLoadError`). A given ``seed``
    gives the same audio for the same model, prompts, duration and device. ``progress`` is
    called from this thread as ``progress(steps_done, steps_total)`` at every decoding step
    (audiocraft's own callback): keep it cheap. ``params`` are sampling settings passed to
    ``set_generation_params`` (top_k, top_p, temperature, cfg_coef).
    """
    _check_request(prompts, duration)
    entry = _entry(kind, name_or_dir, device)
    return _run(
        entry,
        _frames(entry.model, duration),
        seed,
        progress,
        params,
        lambda model: model.generate(list(prompts), progress=progress is not None),
    )


def _check_request(prompts: list[str], duration: float) -> None:
    if not prompts:
        raise ValueError("prompts must not be empty")
    if not duration > 0:
        raise ValueError(f"duration must be > 0, got {duration!r}")


class ModelUnsupported(ValueError):
    """The loaded checkpoint cannot do what was asked (e.g. melody conditioning without a
    chroma conditioner); map it to the task error code ``model_unsupported``."""


def generate_continuation(
    kind: ModelKind,
    name_or_dir: str,
    prompt_audio: npt.NDArray[Any],
    prompt_rate: int,
    prompts: list[str],
    duration: float,
    device: str = "auto",
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: Mapping[str, Any] | None = None,
) -> GeneratedAudio:
    """Continue ``prompt_audio`` ((channels, n) or (n,), any rate and channel count) by
    ``duration`` seconds, one row per prompt (the same audio prompt for each).

    The result holds the prompt followed by the continuation, at the model's rate and
    channel count: ``duration_s`` is about the prompt's length plus ``duration``. Only the
    prompt's last seconds condition the model (at most ``max_duration - min(duration,
    max_duration / 2)``, so every model window has new audio to write); an earlier part is
    copied to the output unchanged. Same model cache, lock, seed, progress and ``params`` as
    :func:`generate`.
    """
    _check_request(prompts, duration)
    entry = _entry(kind, name_or_dir, device)
    import torch
    from audiocraft.data.audio_utils import convert_audio

    model = entry.model
    wav = torch.from_numpy(_channels_first(prompt_audio)).to(model.device)
    # At the model's rate and channels: the prompt as the output will hold it.
    wav = convert_audio(wav, int(prompt_rate), int(model.sample_rate), int(model.audio_channels))
    rate = int(model.sample_rate)
    prompt_s = wav.shape[-1] / rate
    if prompt_s <= 0:
        raise ValueError("the audio prompt is empty")
    window = float(model.max_duration)
    keep_s = min(prompt_s, window - min(float(duration), window / 2))
    cut = wav.shape[-1] - max(1, int(keep_s * rate))  # float rounding never empties the tail
    head, tail = wav[:, :cut], wav[:, cut:]
    batch = tail[None].expand(len(prompts), -1, -1)
    # audiocraft generates int(duration * frame_rate) frames in all, the prompt's included,
    # and EnCodec pads a prompt that ends mid-frame to a whole frame. In seconds, such a
    # prompt plus one frame of new audio rounds down to no new frame (an assertion fails),
    # so the length is counted in frames: the prompt's, rounded up, plus the new ones.
    hop = round(rate / float(model.frame_rate))
    audio = _run(
        entry,
        -(-tail.shape[-1] // hop) + _frames(model, duration),
        seed,
        progress,
        params,
        lambda m: m.generate_continuation(
            batch, rate, list(prompts), progress=progress is not None
        ),
    )
    if cut <= 0:
        return audio
    start = head.detach().to(dtype=torch.float32, device="cpu").numpy()
    start = np.broadcast_to(start, (audio.samples.shape[0], *start.shape))
    samples = np.concatenate([start, audio.samples], axis=-1).astype(np.float32, copy=False)
    return GeneratedAudio(samples=np.ascontiguousarray(samples), sample_rate=audio.sample_rate)


def supports_melody(model: Any) -> bool:
    """Whether a loaded MusicGen has the chroma (melody) conditioner of the melody checkpoints."""
    provider = getattr(getattr(model, "lm", None), "condition_provider", None)
    conditioners = getattr(provider, "conditioners", None) or {}
    return "self_wav" in conditioners


def generate_melody(
    kind: ModelKind,
    name_or_dir: str,
    melody_audio: npt.NDArray[Any],
    melody_rate: int,
    prompts: list[str],
    duration: float,
    device: str = "auto",
    seed: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    params: Mapping[str, Any] | None = None,
) -> GeneratedAudio:
    """``duration`` seconds per prompt, following the melody (chromagram) of
    ``melody_audio`` ((channels, n) or (n,), any rate); MusicGen melody checkpoints only.

    Raises :class:`ModelUnsupported` for AudioGen or a checkpoint without a chroma
    conditioner (e.g. ``musicgen-small``), :class:`ModelLoadError` as :func:`generate`.
    Melody checkpoints separate stems with demucs, which must be installed.
    """
    _check_request(prompts, duration)
    if kind != "musicgen":
        raise ModelUnsupported(f"melody conditioning needs a MusicGen model, not {kind}")
    entry = _entry(kind, name_or_dir, device)
    if not supports_melody(entry.model):
        raise ModelUnsupported(
            f"musicgen model {name_or_dir!r} has no melody (chroma) conditioner; "
            "melody conditioning needs a melody checkpoint such as facebook/musicgen-melody"
        )
    import torch

    wav = torch.from_numpy(_channels_first(melody_audio)).to(entry.model.device)
    batch = wav[None].expand(len(prompts), -1, -1)
    return _run(
        entry,
        _frames(entry.model, duration),
        seed,
        progress,
        params,
        lambda m: m.generate_with_chroma(
            list(prompts), batch, int(melody_rate), progress=progress is not None
        ),
    )


def _channels_first(audio: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[-1] == 0:
        raise ValueError(f"expected non-empty (n,) or (channels, n) audio, got {arr.shape}")
    return np.ascontiguousarray(np.clip(np.nan_to_num(arr), -1.0, 1.0))


def _frames(model: Any, duration: float) -> int:
    """The frames audiocraft makes of ``duration`` seconds (it rounds down to whole frames).
    Raises ValueError for less than one frame, which it would fail on with an assertion."""
    frame_rate = float(model.frame_rate)
    frames = int(float(duration) * frame_rate)
    if frames < 1:
        raise ValueError(f"duration {duration!r} s is shorter than one frame (1/{frame_rate:g} s)")
    return frames


def _model_duration(model: Any, frames: int) -> float:
    """The ``duration`` to set on ``model`` for exactly ``frames`` frames.

    audiocraft counts frames as ``int(seconds * frame_rate)``, also for what is left after
    each window when a clip is longer than one (``max_duration``: 10 s for AudioGen, 30 s for
    MusicGen). Given a whole number of frames in seconds, that float arithmetic can land a
    hair under one of them and fail an assertion (AudioGen at 10.28 s or 11.04 s did). Half a
    frame more keeps every ``int()`` on the intended frame; a clip that fills one window
    exactly is left at it so that it is still generated in one window.
    """
    frame_rate = float(model.frame_rate)
    window = float(model.max_duration)
    if frames == round(window * frame_rate):
        return window
    return (frames + 0.5) / frame_rate


def _run(
    entry: _Entry,
    frames: int,
    seed: int | None,
    progress: Callable[[int, int], None] | None,
    params: Mapping[str, Any] | None,
    call: Callable[[Any], Any],
) -> GeneratedAudio:
    """Run ``call(model)`` under the model's lock with the generation parameters (``frames``
    of audio in all, an audio prompt's included), progress callback and seed set, and return
    its waveforms as float32 in [-1, 1]."""
    import torch

    model = entry.model
    with entry.lock:
        # Every call sets every parameter: the model object is shared by all requests.
        sampling = {**SAMPLING_DEFAULTS, **(params or {})}
        duration = _model_duration(model, frames)
        model.set_generation_params(duration=duration, use_sampling=True, **sampling)
        # Set on every call (None clears it): the model is shared by every task of the process.
        model.set_custom_progress_callback(progress)
        if seed is None:
            wav = call(model)
        else:
            # fork_rng restores the global RNG afterwards, so seeding here does not make
            # later unseeded generations in this process repeat themselves.
            on_cuda = model.device.type == "cuda"
            devices = [model.device.index or 0] if on_cuda else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                wav = call(model)
    samples = wav.detach().to(dtype=torch.float32, device="cpu").numpy()
    samples = np.clip(np.nan_to_num(samples), -1.0, 1.0).astype(np.float32, copy=False)
    return GeneratedAudio(samples=np.ascontiguousarray(samples), sample_rate=int(model.sample_rate))


def release_memory() -> None:
    """Hand the GPU memory no tensor holds any more back to the driver (after a failed
    generation, before the next). Without CUDA in use, it does nothing."""
    if "torch" not in sys.modules:
        return
    import torch

    if torch.cuda.is_available():
        gc.collect()  # tensors kept alive only by reference cycles (a dropped traceback's)
        torch.cuda.empty_cache()


def _entry(kind: ModelKind, name_or_dir: str, device: str) -> _Entry:
    if kind not in get_args(ModelKind):
        raise ValueError(f"unknown model kind {kind!r}")
    key = (kind, name_or_dir, resolve_device(device), _precision)
    with _LOAD_LOCK:
        entry = _MODELS.get(key)
        if entry is not None:
            _MODELS.move_to_end(key)  # most recently used
            return entry
        # Make room first, so two large models are never in memory together by accident.
        _evict_over(_max_models - 1)
        model = load_checkpoint(kind, name_or_dir, key[2])
        try:
            apply_precision(model, key[3])
        except PrecisionUnsupported as exc:
            raise ModelLoadError(f"{kind} model {name_or_dir!r}: {exc}") from None
        entry = _Entry(model=model, lock=threading.Lock())
        _MODELS[key] = entry
        return entry
