"""Loading a MusicGen/AudioGen checkpoint: a hub name or a folder in the released layout,
through audiocraft's own ``get_pretrained``, with one trusted fallback for checkpoints that
``torch.load(weights_only=True)`` refuses. Cheap to import: torch and audiocraft are imported
when a load runs."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

ModelKind = Literal["musicgen", "audiogen"]

#: Files of a released (or ``audio.random_models``) checkpoint directory.
CHECKPOINT_FILES = ("state_dict.bin", "compression_state_dict.bin")


class ModelLoadError(Exception):
    """A model could not be loaded; the message names the configured model value."""


def _looks_local(name: str) -> bool:
    # Same rule as audiocraft's loader (an existing path wins over a hub name), plus
    # explicit path spellings so a mistyped directory is reported as missing instead of
    # being sent to the hub as a repository id.
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def load_checkpoint(kind: ModelKind, name_or_dir: str, device: str) -> Any:
    """Load a MusicGen/AudioGen model from a hub name or a checkpoint folder onto ``device``
    (uncached: :func:`audio.audio_models.load_model` keeps one per process).

    Raises :class:`ModelLoadError` for a missing directory, a missing checkpoint file, an
    unknown or unreachable hub name, or a checkpoint that does not load.
    """
    source = name_or_dir
    if _looks_local(name_or_dir):
        path = Path(name_or_dir).expanduser()
        if not path.is_dir():
            raise ModelLoadError(f"{kind} model {name_or_dir!r}: no such directory")
        missing = [f for f in CHECKPOINT_FILES if not (path / f).is_file()]
        if missing:
            raise ModelLoadError(
                f"{kind} model {name_or_dir!r}: checkpoint directory lacks {', '.join(missing)}"
            )
        source = str(path)
    _quiet_known_warnings()
    try:
        from audiocraft.models.audiogen import AudioGen
        from audiocraft.models.musicgen import MusicGen

        cls = MusicGen if kind == "musicgen" else AudioGen
        try:
            model = cls.get_pretrained(source, device=device)
        except Exception as exc:
            if not _is_weights_only_error(exc):
                raise
            log.warning(
                "%s model %r refused by torch.load(weights_only=True); "
                "retrying with weights_only=False",
                kind,
                name_or_dir,
            )
            model = _get_pretrained_trusting_pickles(cls, source, device)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{kind} model {name_or_dir!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from exc
    log.info("loaded %s model %r on %s", kind, name_or_dir, device)
    return model


def _is_weights_only_error(exc: BaseException) -> bool:
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, pickle.UnpicklingError) and "weights only" in str(cur).lower():
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _get_pretrained_trusting_pickles(cls: Any, source: str, device: str) -> Any:
    """``cls.get_pretrained`` with audiocraft's checkpoint reads done by a full unpickler.

    Why: torch >= 2.6 defaults ``torch.load`` to ``weights_only=True``, which refuses
    non-tensor objects (released AudioGen checkpoints pickle OmegaConf objects in them);
    audiocraft 1.3.0 calls ``torch.load`` without the argument (fix pending upstream in
    audiocraft PR #534). ``weights_only=False`` runs arbitrary pickle code, so it is used
    only for the checkpoint the operator configured (a local directory or the hub
    repository named in the settings, both trusted), only after the safe load failed, and
    only for audiocraft's checkpoint reader, never process-wide.
    """
    from unittest import mock

    from audiocraft.models import loaders

    with mock.patch.object(loaders, "_get_state_dict", _trusted_get_state_dict):
        return cls.get_pretrained(source, device=device)


def _trusted_get_state_dict(
    file_or_url_or_id: str | Path,
    filename: str | None = None,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> Any:
    # Mirrors audiocraft.models.loaders._get_state_dict (1.3.0), adding weights_only=False.
    import audiocraft
    import torch
    from huggingface_hub import hf_hub_download

    name = str(file_or_url_or_id)
    if Path(name).is_file():
        file = name
    elif Path(name).is_dir():
        file = f"{name}/{filename}"
    elif name.startswith("https://"):
        return torch.hub.load_state_dict_from_url(
            name, map_location=device, check_hash=True, weights_only=False
        )
    else:
        if filename is None:
            raise ValueError("filename is required for hub checkpoints")
        file = hf_hub_download(
            repo_id=name,
            filename=filename,
            cache_dir=cache_dir or os.environ.get("AUDIOCRAFT_CACHE_DIR"),
            library_name="audiocraft",
            library_version=audiocraft.__version__,
        )
    return torch.load(file, map_location=device, weights_only=False)


def _quiet_known_warnings() -> None:
    """Silence two warnings every worker would print at the first load, both understood:
    xformers' C++ kernels do not match this torch (generation uses torch's own attention,
    see the shared NOTES), and audiocraft uses torch's deprecated weight_norm."""
    import warnings

    logging.getLogger("xformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
