"""The loaded, checked form of a workflow file.

These structs are what the rest of the service sees: the loader (``workflows.loader``) builds
them only from a file that passed every check, with ``$SETTING`` references in input limits
already replaced by numbers. They are frozen so one loaded workflow can be shared by the API
and every worker without anyone changing it underneath the others.

Growing the language: every field past the first few is keyword-only with a default, so later
keys slot in as new defaulted fields without touching files written today. The planned ones:

* ``Stage.needs`` (DAG edges), ``Stage.foreach`` + ``Stage.max_concurrency`` (fan-out),
  ``Stage.when`` (condition) and ``Stage.input`` (expression mapping). Today stages run one
  after another in list order; when ``needs`` arrives, a stage without it will depend on the
  stage before it, so today's files keep their meaning.
* ``Workflow.on_failure`` and ``Workflow.finally_`` (``finally:`` in YAML): extra stage lists.

Until then the loader rejects those keys as unknown (with a hint that they are reserved).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

#: The scalar types an input field may have (JSON Schema names).
InputType = Literal["string", "integer", "number", "boolean"]
INPUT_TYPES: tuple[InputType, ...] = ("string", "integer", "number", "boolean")

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
    """How a failed stage is retried: exponential backoff from ``backoff_initial_s``, capped
    at ``backoff_max_s``. ``max_attempts`` counts the first try (1 means no retry)."""

    max_attempts: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a workflow: a message to the Dramatiq actor named ``actor``.

    ``queue`` is None when the stage uses the actor's own queue. ``params`` is a static JSON
    mapping handed to the actor as is. ``timeout_s`` None means the actor's own time limit.
    """

    id: str
    actor: str
    queue: str | None = None
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    timeout_s: float | None = None


class Workflow(msgspec.Struct, frozen=True, kw_only=True):
    """A checked workflow, ready to compile into an actor pipeline.

    ``input`` and ``outputs`` keep the order of the YAML file; ``stages`` run in list order.
    ``source`` is the path of the file it was loaded from (for messages and debugging).
    """

    name: str
    version: int
    description: str = ""
    input: dict[str, InputField] = msgspec.field(default_factory=dict)
    outputs: dict[str, OutputSpec] = msgspec.field(default_factory=dict)
    stages: tuple[Stage, ...] = ()
    source: str = ""

    def stage(self, stage_id: str) -> Stage:
        """The stage with this id; KeyError when there is none."""
        for stage in self.stages:
            if stage.id == stage_id:
                return stage
        raise KeyError(stage_id)
