"""Generation stages: MusicGen and AudioGen, each on its own queue so a GPU worker pool can
be dedicated to one model. torch and audiocraft are imported only when a stage runs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from actors import events
from actors.batching import Batcher, Clip, Progress, Request
from actors.context import StageContext
from actors.dag import current_item
from actors.progress import ProgressReporter
from actors.registry import stage
from actors.resources import Resources, resources
from core.errors import StageError
from core.metrics import observe_generation
from core.settings import Settings
from core.state import blob_key
from workflows.limits import MIN_DURATION_S, MIN_TEMPERATURE

Kind = Literal["musicgen", "audiogen"]


#: Sampling settings a workflow input may set (the rest are audiocraft's defaults).
SAMPLING_KEYS = ("top_k", "top_p", "temperature", "cfg_coef")

#: Dramatiq gives a free worker thread the waiting message of the lowest ``priority`` first.
#: A generation message holds its thread while it waits for the batcher, so generation ranks
#: after every other stage (default 0): the last stages of finished tasks (store, callback)
#: run at once instead of queueing behind generations that cannot start yet.
GENERATION_PRIORITY = 10

_batcher_lock = threading.Lock()
_batcher: Batcher | None = None


def batcher() -> Batcher:
    """This process's batcher (one generation thread per worker process)."""
    global _batcher
    with _batcher_lock:
        if _batcher is None:
            settings = resources().settings
            _batcher = Batcher(
                generate_batch,
                max_batch=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000,
                window_fraction=settings.batch_window_fraction,
                bucket_s=settings.batch_bucket_s,
                seeded=_generate_seeded,
                release_memory=_release_memory,
            )
        return _batcher


def generate_batch(
    kind: str,
    model: str,
    prompts: list[str],
    duration: float,
    device: str,
    params: Mapping[str, Any],
    progress: Progress | None,
) -> tuple[npt.NDArray[np.float32], int]:
    """The batcher's model call (a ``GenerateFn``): one ``generate`` over the batch's prompts,
    observed in the generation metrics."""
    from audio import audio_models

    started = time.perf_counter()
    audio = audio_models.generate(
        cast(audio_models.ModelKind, kind), model, prompts, duration, device, None, progress, params
    )
    observe_generation(kind, time.perf_counter() - started, duration, len(prompts))
    return audio.samples, audio.sample_rate


def _release_memory() -> None:
    from audio import audio_models

    audio_models.release_memory()


def _generate_seeded(request: Request) -> Clip:
    from audio import audio_models

    started = time.perf_counter()
    audio = audio_models.generate(
        cast(audio_models.ModelKind, request.kind),
        request.model,
        [request.prompt],
        request.duration,
        request.device,
        request.seed,
        request.progress,
        request.params,
    )
    observe_generation(request.kind, time.perf_counter() - started, request.duration, 1)
    return Clip(audio.samples[0], audio.sample_rate, 1)


def model_setting(settings: Settings, kind: Kind) -> str:
    return settings.music_gen_model if kind == "musicgen" else settings.audio_gen_model


async def run_generation(kind: Kind, ctx: StageContext, given: Any = None) -> dict[str, Any]:
    """Generate from ``given`` (the stage's evaluated ``input:``: prompt, duration, seed) or,
    without one, from the task's own input."""
    from audio import audio_models  # heavy: torch + audiocraft

    res, task_id, stage_id = ctx.res, ctx.task_id, ctx.stage_id
    # Already running: the stage's start (tasks.lifecycle.decide) moved it out of queued.
    task = await ctx.active_task()
    params = res.stage(ctx.workflow, stage_id).params
    model_ref = str(params.get("model") or model_setting(res.settings, kind))
    inputs = given if isinstance(given, dict) and "prompt" in given else task.input
    prompt, duration = str(inputs["prompt"]), float(inputs["duration"])
    seed = inputs.get("seed")
    _check_floors(duration, inputs)

    async def milestone(fraction: float) -> None:
        await res.lifecycle.emit(task, "progress", f"progress:{stage_id}:{round(fraction * 100)}")

    progress = ProgressReporter(
        res.state,
        task_id,
        stage_id,
        asyncio.get_running_loop(),
        on_milestone=milestone if events.wants(task, "progress") else None,
        milestones=events.MILESTONES,
    )
    audio_ref = inputs.get("audio_prompt") or inputs.get("melody")
    if audio_ref:
        # Conditioned on input audio: run alone (never batched), under the model's lock.
        mode: AudioMode = "continuation" if inputs.get("audio_prompt") else "melody"
        clip = await _generate_from_audio(
            res, mode, kind, model_ref, str(audio_ref), prompt, duration, inputs, progress
        )
        return await _store_clip(ctx, clip)
    request = Request(
        kind=kind,
        model=model_ref,
        prompt=prompt,
        duration=duration,
        device=res.settings.device,
        # -1 (the schemas' default) means "any seed": the request may then be batched.
        seed=None if seed is None or int(seed) < 0 else int(seed),
        params={k: inputs[k] for k in SAMPLING_KEYS if inputs.get(k) is not None},
        progress=progress,
    )
    try:
        clip = await asyncio.wrap_future(batcher().submit(request))
    except audio_models.ModelLoadError as exc:
        raise StageError("model_unavailable", str(exc)) from None
    return await _store_clip(ctx, clip)


def _check_floors(duration: float, inputs: Mapping[str, Any]) -> None:
    """Refuse, once, what the models cannot generate. The built-in workflows refuse it at
    submission; a custom workflow with lower limits (or a stage input computed by an
    expression) would otherwise fail inside audiocraft on every retry."""
    if duration < MIN_DURATION_S:
        raise StageError(
            "invalid_input",
            f"duration: {duration:g} s is shorter than one frame ({MIN_DURATION_S:g} s)",
        )
    temperature = inputs.get("temperature")
    if temperature is not None and float(temperature) < MIN_TEMPERATURE:
        raise StageError(
            "invalid_input",
            f"temperature: {float(temperature):g} is below {MIN_TEMPERATURE:g} "
            "(lower values can overflow the sampling)",
        )


#: Generation conditioned on input audio: ``audio_prompt`` (continue it) or ``melody``.
AudioMode = Literal["continuation", "melody"]


async def _generate_from_audio(
    res: Resources,
    mode: AudioMode,
    kind: Kind,
    model_ref: str,
    audio_ref: str,
    prompt: str,
    duration: float,
    inputs: Mapping[str, Any],
    progress: Progress,
) -> Clip:
    """Continue (``continuation``) or follow the melody of (``melody``) the audio that
    ``audio_ref`` references. A continuation's clip holds the prompt followed by
    ``duration`` new seconds; a melody clip is ``duration`` seconds."""
    from audio import audio_models
    from audio.audio_input import fetch_audio

    samples, rate = await fetch_audio(audio_ref, res)
    seed = inputs.get("seed")
    call = (
        audio_models.generate_continuation
        if mode == "continuation"
        else audio_models.generate_melody
    )
    started = time.perf_counter()
    try:
        audio = await asyncio.to_thread(
            call,
            kind,
            model_ref,
            samples,
            rate,
            [prompt],
            duration,
            res.settings.device,
            None if seed is None or int(seed) < 0 else int(seed),
            progress,
            {k: inputs[k] for k in SAMPLING_KEYS if inputs.get(k) is not None},
        )
    except audio_models.ModelLoadError as exc:
        raise StageError("model_unavailable", str(exc)) from None
    except audio_models.ModelUnsupported as exc:
        raise StageError("model_unsupported", str(exc)) from None
    observe_generation(kind, time.perf_counter() - started, duration, 1)
    return Clip(audio.samples[0], audio.sample_rate, 1)


async def _store_clip(ctx: StageContext, clip: Clip) -> dict[str, Any]:
    from audio import audio_models

    res, task_id, stage_id = ctx.res, ctx.task_id, ctx.stage_id
    item = current_item()
    key = blob_key(task_id, stage_id if item < 0 else f"{stage_id}.{item}", 0)
    ref = await res.handoff.put(key, audio_models.encode_wav(clip.samples, clip.sample_rate))
    media = {
        "blob": ref,
        "content_type": "audio/wav",
        "sample_rate": clip.sample_rate,
        "duration_s": clip.samples.shape[-1] / clip.sample_rate,
        # How many requests shared the decoding (1: it ran alone).
        "batch_size": clip.batch_size,
    }
    return {"media": [media]}


@stage("audio.musicgen", queue="musicgen", outputs=("media",), priority=GENERATION_PRIORITY)
async def musicgen(ctx: StageContext, previous: Any = None) -> dict[str, Any]:
    """Text to music with the MUSIC_GEN_MODEL checkpoint (or the stage's ``params.model``)."""
    return await run_generation("musicgen", ctx, previous)


@stage("audio.audiogen", queue="audiogen", outputs=("media",), priority=GENERATION_PRIORITY)
async def audiogen(ctx: StageContext, previous: Any = None) -> dict[str, Any]:
    """Text to sound effects with the AUDIO_GEN_MODEL checkpoint (or ``params.model``)."""
    return await run_generation("audiogen", ctx, previous)
