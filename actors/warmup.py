"""A generation worker's model settings, its optional warm-up, and the readiness file that
says it is warm.

``aimarket worker --warmup --ready-file PATH`` loads the models of the worker's GPU queues and
decodes one short clip before the file appears, so an orchestrator's readiness probe
(``test -f PATH``) sends traffic only to a worker that will answer at full speed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from audio import audio_models
from core.settings import Settings

log = logging.getLogger(__name__)

#: Set by `aimarket worker`: the model kinds to warm (comma-separated) and the file to touch.
WARMUP_ENV = "AIMARKET_WARMUP"
READY_FILE_ENV = "AIMARKET_READY_FILE"


def configure_models(settings: Settings) -> None:
    """Apply this process's model settings (hub cache, models kept loaded, precision); call it
    before the first load, in a worker process or in the embedded API's."""
    audio_models.configure_cache(settings.cache_model_dir)
    audio_models.set_cache_size(settings.model_cache_size)
    audio_models.set_precision(settings.model_precision)


def warm(settings: Settings, kinds: list[str]) -> None:
    for kind in kinds:
        model = settings.music_gen_model if kind == "musicgen" else settings.audio_gen_model
        started = time.perf_counter()
        audio_models.generate(kind, model, ["warm up"], 1.0, settings.device)  # type: ignore[arg-type]
        log.info("warmed %s model %r in %.1f s", kind, model, time.perf_counter() - started)


def start_warmup(settings: Settings) -> None:
    """Warm in the background (the worker starts consuming at once; the first batch waits
    for the model like any other), then write the ready file."""
    kinds = [k for k in os.environ.get(WARMUP_ENV, "").split(",") if k]
    ready = os.environ.get(READY_FILE_ENV)

    def run() -> None:
        try:
            warm(settings, kinds)
        except Exception:
            log.exception("warm-up failed; the worker stays not ready")
            return
        if ready:
            Path(ready).write_text(f"ready {os.getpid()}\n")

    if kinds:
        threading.Thread(target=run, name="warmup", daemon=True).start()
    elif ready:
        Path(ready).write_text(f"ready {os.getpid()}\n")
