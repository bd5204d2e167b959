"""The ``fade.apply`` stage actor: a linear fade-in and fade-out on each generated audio clip.

aimarket imports this module through the ``aimarket.stages`` entry point (or ``ACTOR_MODULES=
aimarket_fade.stage``); importing it registers the actor on the process's Dramatiq broker, so
workflows may name ``actor: fade.apply``. It runs on the ``default`` queue (CPU work).

What a workflow hands it (the stage's ``input:`` mapping)::

    - id: fade
      actor: fade.apply
      input:
        media: stages.generate.media   # media items, as audio.musicgen returns them
        seconds: input.fade            # fade length in seconds (optional)

* ``media``: a list of items ``{"blob", "content_type", "sample_rate", "duration_s"}``, where
  ``blob`` is a key of the task's short-lived state (Redis, or memory in embedded mode).
  Each ``audio/wav`` item is faded into a new blob; other items (pictures) pass through as
  they are, in place.
* ``seconds``: the length of the fade-in and of the fade-out, 0 or more. Without it the
  stage's ``params.seconds`` is used, else 0.5. A fade longer than half a clip is shortened
  to half the clip.

It returns ``{"media": [...]}``, the same items in the same order with each audio item's
``blob`` (and ``sample_rate``, ``duration_s``) replaced, so ``media.visualize`` or
``media.store`` can follow it. Run as a plain pipeline stage (no ``input:``), it fades the
``media`` of the stage before it. The input blobs are left to expire with the task's state
(another stage may still read them).

Errors: a missing or malformed ``media`` list or a negative ``seconds`` raise
:class:`~core.errors.StageError` (``invalid_fade``), and an audio blob that has already
expired raises ``media_lost``: both end the task at once, as no retry can fix them. Anything
else (a broken connection to the state store) is retried by the stage's retry policy.
"""

from __future__ import annotations

import asyncio
from typing import Any

from actors.context import StageContext
from actors.dag import current_item
from actors.registry import stage
from core.errors import StageError
from core.state import blob_key

__all__ = ["DEFAULT_SECONDS", "apply"]

#: The fade length when neither the stage's input nor its params give one.
DEFAULT_SECONDS = 0.5


@stage("fade.apply", queue="default", outputs=("media",))
async def apply(ctx: StageContext, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fade each ``audio/wav`` item of ``given["media"]`` in and out over ``seconds``;
    returns ``{"media": [...]}`` (see the module docstring)."""
    from aimarket_fade.audio import fade_wav  # numpy and soundfile: only when a stage runs

    task_id, stage_id = ctx.task_id, ctx.stage_id
    given = given or {}
    media = given.get("media")
    if not isinstance(media, list) or not all(isinstance(m, dict) for m in media):
        raise StageError("invalid_fade", "fade.apply needs 'media': a list of media items")
    seconds = _seconds(given, ctx)
    handoff = ctx.res.handoff
    item = current_item()  # two items of a foreach stage must not share a blob key
    name = stage_id if item < 0 else f"{stage_id}.{item}"
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(media):
        if entry.get("content_type") != "audio/wav":
            out.append(entry)
            continue
        wav = await handoff.get(str(entry["blob"]))
        if wav is None:
            raise StageError("media_lost", f"audio {entry['blob']} expired before the fade")
        # Decoding, fading and encoding a clip is CPU work: off the event loop that every
        # actor of this worker shares.
        faded, rate, duration = await asyncio.to_thread(fade_wav, wav, seconds)
        key = blob_key(task_id, name, index)
        ref = await handoff.put(key, faded)
        out.append({**entry, "blob": ref, "sample_rate": rate, "duration_s": duration})
    return {"media": out}


def _seconds(given: dict[str, Any], ctx: StageContext) -> float:
    """The fade length: the stage's input, else its ``params.seconds``, else the default."""
    value = given.get("seconds")
    if value is None:
        value = ctx.res.stage(ctx.workflow, ctx.stage_id).params.get("seconds", DEFAULT_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise StageError("invalid_fade", f"the fade length must be 0 or more seconds: {value!r}")
    return float(value)
