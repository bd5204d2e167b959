"""The loaded, checked form of a workflow file.

These structs are what the rest of the service sees: the loader (``workflows.loader``) builds
them only from a file that passed every check, with ``$SETTING`` references in input limits
already replaced by numbers. They are frozen so one loaded workflow can be shared by the API
and every worker without anyone changing it underneath the others.

How a workflow runs (what the checker guarantees and the runtime implements):

* ``stages`` form a DAG through ``Stage.needs``: a stage starts once every stage it needs has
  ended (succeeded, or been skipped by its ``when``). ``needs`` is always filled in: a stage
  written without ``needs`` depends on the stage before it in the list, the first one on
  nothing, so files written before ``needs`` existed keep their straight-line meaning. The
  graph has no cycle, and ``needs`` only names main stages.
* ``when`` (an expression, see ``workflows.expressions``) is evaluated once the needs have
  ended; when it is not truthy the stage is skipped, its output is null, and the stages that
  need it still run.
* ``foreach`` is evaluated once (after ``when``) and must give a list; the actor runs once
  per item, at most ``max_concurrency`` at a time (all at once when None), and the stage's
  output is the list of the items' outputs, in item order. Only ``input`` expressions see
  ``item`` and ``index``.
* ``input`` expressions build the value handed to the actor; they may read ``input``, the
  outputs of the stage's upstream stages (ancestors through ``needs``), and ``item`` and
  ``index`` in a ``foreach`` stage.
* ``on_failure`` handlers run, in order, when the task fails; ``finally`` handlers run, in
  order, after the task has ended either way (after the ``on_failure`` ones). A handler has no
  ``needs``, ``when`` or ``foreach``; its expressions may read ``input`` and any main stage's
  output (null when that stage did not finish). Stage ids are unique across main stages and
  handlers.

Growing the language: every field past the first few is keyword-only with a default, so later
keys slot in as new defaulted fields without touching files written today.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

#: The types an input field may have: JSON Schema's scalar names, plus ``audio``, a string
#: that references input audio (``upload:<id>`` from ``POST /v1/uploads``, or an http(s)
#: URL); only its form is checked at submit, the audio itself when a stage fetches it.
InputType = Literal["string", "integer", "number", "boolean", "audio"]
INPUT_TYPES: tuple[InputType, ...] = ("string", "integer", "number", "boolean", "audio")

#: The form of an ``audio`` input value (see ``workflows.inputs``) and its longest length.
AUDIO_REF_PATTERN = r"^(upload:[A-Za-z0-9_-]{1,64}|https?://[^/?#\s]+([/?#]\S*)?)$"
AUDIO_REF_MAX_LENGTH = 2000

#: What a workflow may produce. ``audio`` is a media file stored in S3; the others are plain
#: JSON values in the result.
OutputType = Literal["audio", "image", "text", "json"]
OUTPUT_TYPES: tuple[OutputType, ...] = ("audio", "image", "text", "json")

#: An enum member or default: the JSON scalars an input field can hold.
Scalar = str | int | float | bool


class InputField(msgspec.Struct, frozen=True, kw_only=True):
    """One field of a workflow's input body.

    A field without a ``default`` is required. Numeric limits apply to ``integer`` and
    ``number`` fields (for ``integer`` they are ints), length limits to ``string`` fields;
    ``enum`` is allowed on ``string`` and ``integer`` only. The loader guarantees these rules
    and that the default, when present, satisfies the field's own type and limits.
    """

    type: InputType
    description: str | None = None
    #: ``msgspec.UNSET`` when the field is required (``None`` is not a valid default).
    default: Scalar | msgspec.UnsetType = msgspec.UNSET
    enum: tuple[str | int, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    exclusive_minimum: int | float | None = None
    exclusive_maximum: int | float | None = None
    min_length: int | None = None
    max_length: int | None = None

    @property
    def required(self) -> bool:
        return self.default is msgspec.UNSET


class OutputSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One named output of a workflow (``outputs:`` in YAML)."""

    type: OutputType
    description: str | None = None


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a failed stage is retried.

    ``max_attempts`` counts the first try (1 means no retry). The wait before retry ``n``
    (1-based) is ``backoff_initial_s * backoff_factor ** (n - 1)``, capped at
    ``backoff_max_s``; with ``jitter`` a random part of it is taken off (so retries of many
    tasks spread out). ``retry_on`` lists what is retried: exception class names
    (``TimeoutError``) or error codes (``model_unavailable``); ``("*",)`` means any error
    except the errors a stage declares permanent. The loader guarantees
    ``1 < backoff_factor <= 10``, ``backoff_initial_s <= backoff_max_s`` and a non-empty
    ``retry_on`` of unique names in which ``"*"`` stands alone.
    """

    max_attempts: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    backoff_factor: float = 2.0
    jitter: bool = True
    retry_on: tuple[str, ...] = ("*",)


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a workflow: a message to the Dramatiq actor named ``actor``.

    ``queue`` is None when the stage uses the actor's own queue. ``params`` is a static JSON
    mapping handed to the actor as is. ``timeout_s`` None means the actor's own time limit.

    ``needs`` holds the ids of the stages this one waits for, resolved (see the module
    docstring): ``()`` for a root, ``(previous_id,)`` for a stage written without ``needs``;
    ``needs_explicit`` tells whether the file wrote ``needs``. ``when`` and ``foreach`` are
    expression sources (None when absent), ``input`` maps each value handed to the actor to
    its expression source; compile them with ``workflows.expressions.compile_expression``
    (cached). ``max_concurrency`` (1..100) is set only on ``foreach`` stages. Handler stages
    (``Workflow.on_failure``, ``Workflow.finally_``) have no needs, when, foreach or
    max_concurrency.
    """

    id: str
    actor: str
    queue: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    needs: tuple[str, ...] = ()
    needs_explicit: bool = False
    when: str | None = None
    foreach: str | None = None
    max_concurrency: int | None = None
    input: dict[str, str] = msgspec.field(default_factory=dict)


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    """A checked workflow, ready to compile into an execution plan.

    ``input`` and ``outputs`` keep the order of the YAML file; ``stages`` keep the file's
    order, which is also a valid run order only for stages without explicit ``needs`` (use
    ``Stage.needs``). ``on_failure`` and ``finally_`` (``finally:`` in YAML) are the handler
    stages. ``source`` is the path of the file it was loaded from.
    """

    name: str
    version: int
    description: str = ""
    input: dict[str, InputField] = msgspec.field(default_factory=dict)
    outputs: dict[str, OutputSpec] = msgspec.field(default_factory=dict)
    stages: tuple[Stage, ...] = ()
    on_failure: tuple[Stage, ...] = ()
    finally_: tuple[Stage, ...] = msgspec.field(default=(), name="finally")
    source: str = ""
    #: Seconds a task of this workflow may take from submission to its end (None: the
    #: TASK_DEADLINE_S setting); past it the task ends ``failed`` with code ``timeout``.
    deadline_s: float | None = None

    def deadline(self, default_s: float) -> float:
        """This workflow's deadline in seconds, ``default_s`` (TASK_DEADLINE_S) when unset."""
        return self.deadline_s if self.deadline_s is not None else default_s

    @property
    def all_stages(self) -> tuple[Stage, ...]:
        """Main stages, then ``on_failure`` and ``finally`` handlers (ids are unique)."""
        return (*self.stages, *self.on_failure, *self.finally_)

    def stage(self, stage_id: str) -> Stage:
        """The stage (main or handler) with this id; KeyError when there is none."""
        for stage in self.all_stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)

    def dependents(self, stage_id: str) -> tuple[Stage, ...]:
        """The main stages that need ``stage_id`` directly, in file order."""
        return tuple(stage for stage in self.stages if stage_id in stage.needs)
