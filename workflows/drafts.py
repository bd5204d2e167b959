"""What the checker has read of each stage (drafts and their expressions): the checks that
need every stage read these, and a file without errors is built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from workflows.expressions import Expression
from workflows.spec import RetryPolicy, Stage

Role = Literal["when", "foreach", "input"]


@dataclass
class Expr:
    """One expression of a stage, with its node; ``compiled`` is None when it does not
    compile (already reported)."""

    node: yaml.ScalarNode
    what: str  # "'when' of stage 'mix'", for messages
    role: Role
    compiled: Expression | None


@dataclass
class Draft:
    """What was read of one stage. The checks that need every stage (ids, needs, what the
    expressions read) run on drafts; a Stage is built only from a file without errors."""

    node: yaml.MappingNode
    handler: str | None  # None for a main stage, else "on_failure" or "finally"
    what: str  # "stage 'mix'", for messages
    raw_id: str | None  # the id as written, even one that breaks its pattern
    id_node: yaml.Node | None
    stage_id: str | None = None  # the id, when valid
    actor: str | None = None
    queue: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float | None = None
    needs: list[tuple[str, yaml.Node]] = field(default_factory=list)  # as written
    needs_explicit: bool = False
    needs_broken: bool = False  # some of needs could not be read or names no stage
    resolved: tuple[str, ...] = ()  # set by the graph check
    has_foreach: bool = False  # the key is there, even when its expression is broken
    when: Expr | None = None
    foreach: Expr | None = None
    max_concurrency: int | None = None
    inputs: dict[str, Expr] = field(default_factory=dict)

    def expressions(self) -> list[Expr]:
        return [e for e in (self.when, self.foreach, *self.inputs.values()) if e is not None]

    def build(self) -> Stage:
        """The Stage; only called when the file had no error, so every part is there."""
        if self.stage_id is None or self.actor is None:
            raise RuntimeError(f"{self.what} was built from a file with errors")
        return Stage(
            id=self.stage_id,
            actor=self.actor,
            queue=self.queue,
            params=self.params,
            retry=self.retry,
            timeout_s=self.timeout_s,
            needs=self.resolved,
            needs_explicit=self.needs_explicit,
            when=None if self.when is None else self.when.node.value,
            foreach=None if self.foreach is None else self.foreach.node.value,
            max_concurrency=self.max_concurrency,
            input={name: expr.node.value for name, expr in self.inputs.items()},
        )


@dataclass
class Stages:
    main: list[Draft]
    on_failure: list[Draft]
    finally_: list[Draft]

    @property
    def handlers(self) -> list[Draft]:
        return [*self.on_failure, *self.finally_]

    @property
    def all(self) -> list[Draft]:
        return [*self.main, *self.on_failure, *self.finally_]
