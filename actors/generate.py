"""Generation stages: MusicGen and AudioGen, each on its own queue so a GPU worker pool can
be dedicated to one model. torch and audiocraft are imported only when a stage runs."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from actors.dag import current_item
from actors.errors import StageError
from actors.lifecycle import active_task
from actors.progress import ProgressReporter
from actors.registry import stage
from actors.resources import resources
from aimarket.state import blob_key
from db.tasks import mark_running

Kind = Literal["musicgen", "audiogen"]


def model_setting(kind: Kind) -> str:
    settings = resources().settings
    return settings.music_gen_model if kind == "musicgen" else settings.audio_gen_model


async def run_generation(
    kind: Kind, task_id: str, workflow: str, stage_id: str, given: Any = None
) -> dict[str, Any]:
    """Generate from ``given`` (the stage's evaluated ``input:``: prompt, duration, seed) or,
    without one, from the task's own input."""
    from actors import audio_models  # heavy: torch + audiocraft

    res = resources()
    task = await active_task(task_id)
    await mark_running(res.db, task_id)
    params = res.stage(workflow, stage_id).params
    model_ref = str(params.get("model") or model_setting(kind))
    inputs = given if isinstance(given, dict) and "prompt" in given else task.input
    prompt, duration = str(inputs["prompt"]), float(inputs["duration"])
    seed = inputs.get("seed")
    progress = ProgressReporter(res.state, task_id, stage_id, asyncio.get_running_loop())
    try:
        # The model call blocks for seconds: run it off the event loop shared by the actors.
        audio = await asyncio.to_thread(
            audio_models.generate,
            kind,
            model_ref,
            [prompt],
            duration,
            res.settings.device,
            seed,
            progress,
        )
    except audio_models.ModelLoadError as exc:
        raise StageError("model_unavailable", str(exc)) from None
    media = []
    for index, samples in enumerate(audio.samples):
        wav = audio_models.encode_wav(samples, audio.sample_rate)
        item = current_item()
        key = blob_key(task_id, stage_id if item < 0 else f"{stage_id}.{item}", index)
        await res.state.put_blob(key, wav)
        media.append(
            {
                "blob": key,
                "content_type": "audio/wav",
                "sample_rate": audio.sample_rate,
                "duration_s": samples.shape[-1] / audio.sample_rate,
            }
        )
    return {"media": media}


@stage("audio.musicgen", queue="musicgen", outputs=("media",))
async def musicgen(
    task_id: str, workflow: str, stage_id: str, previous: Any = None
) -> dict[str, Any]:
    """Text to music with the MUSIC_GEN_MODEL checkpoint (or the stage's ``params.model``)."""
    return await run_generation("musicgen", task_id, workflow, stage_id, previous)


@stage("audio.audiogen", queue="audiogen", outputs=("media",))
async def audiogen(
    task_id: str, workflow: str, stage_id: str, previous: Any = None
) -> dict[str, Any]:
    """Text to sound effects with the AUDIO_GEN_MODEL checkpoint (or ``params.model``)."""
    return await run_generation("audiogen", task_id, workflow, stage_id, previous)
