"""The stage graph: cycles and ancestors for the checker, levels, Mermaid and outline views."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import ACTORS, OK_FILES, check
from workflows.graph import ancestors, cycles, levels, mermaid, outline
from workflows.loader import BUILTIN_DIR
from workflows.spec import Stage, Workflow


def small_dag() -> Workflow:
    """validate -> (takes for each item, sfx when) -> mix-down (when) -> end, plus two handlers.
    ``end`` is a Mermaid keyword and ``mix-down`` has a hyphen: both need other node ids."""
    return Workflow(
        name="mixdown",
        version=2,
        stages=(
            Stage(id="validate", actor="task.validate"),
            Stage(
                id="takes",
                actor="audio.musicgen",
                needs=("validate",),
                foreach="range(input.n)",
                max_concurrency=2,
            ),
            Stage(
                id="sfx",
                actor="audio.audiogen",
                needs=("validate",),
                needs_explicit=True,
                when="input.sfx",
            ),
            Stage(
                id="mix-down",
                actor="audio.mix",
                needs=("takes", "sfx"),
                needs_explicit=True,
                when='input.level > `0.5` && input.name != "#1"',
            ),
            Stage(id="end", actor="media.store", needs=("mix-down",)),
        ),
        on_failure=(Stage(id="cleanup", actor="media.store"),),
        finally_=(Stage(id="callback", actor="task.callback"),),
    )


QUEUES = {
    "validate": "default",
    "takes": "musicgen",
    "sfx": "audiogen",
    "mix-down": "default",
    "end": "default",
    "cleanup": "default",
    "callback": "callbacks",
}


def test_mermaid_of_a_small_dag() -> None:
    assert mermaid(small_dag(), QUEUES) == (
        "flowchart TD\n"
        '    validate["validate<br/>task.validate · default"]\n'
        '    takes[["takes ×each (max 2)<br/>audio.musicgen · musicgen'
        '<br/>foreach: range(input.n)"]]\n'
        '    sfx["sfx<br/>audio.audiogen · audiogen<br/>when: input.sfx"]\n'
        '    mix_down["mix-down<br/>audio.mix · default'
        '<br/>when: input.level #gt; `0.5` && input.name != #quot;#35;1#quot;"]\n'
        '    end_["end<br/>media.store · default"]\n'
        "    validate --> takes\n"
        "    validate -. when .-> sfx\n"
        "    takes -. when .-> mix_down\n"
        "    sfx -. when .-> mix_down\n"
        "    mix_down --> end_\n"
        '    subgraph Handlers ["on failure / finally"]\n'
        '        cleanup["cleanup<br/>media.store · default<br/>on failure"]\n'
        '        callback["callback<br/>task.callback · callbacks<br/>finally"]\n'
        "        cleanup --> callback\n"
        "    end\n"
    )


def test_outline_of_a_small_dag() -> None:
    assert outline(small_dag(), QUEUES) == (
        "mixdown v2: 5 stages on 4 levels (stages on one level may run at the same time)\n"
        "1  validate  task.validate   default\n"
        "2  takes     audio.musicgen  musicgen   after validate; foreach range(input.n), max 2\n"
        "   sfx       audio.audiogen  audiogen   after validate; when input.sfx\n"
        "3  mix-down  audio.mix       default    after takes, sfx; "
        'when input.level > `0.5` && input.name != "#1"\n'
        "4  end       media.store     default    after mix-down\n"
        "on failure\n"
        "   cleanup   media.store     default\n"
        "finally\n"
        "   callback  task.callback   callbacks\n"
    )


def test_views_of_a_straight_line_without_handlers() -> None:
    workflow = Workflow(
        name="line",
        version=1,
        stages=(
            Stage(id="a", actor="task.validate"),
            Stage(id="b", actor="media.store", queue="big", needs=("a",)),
        ),
    )
    # A stage missing from ``queues`` shows its own queue, then "?".
    assert mermaid(workflow, {}) == (
        "flowchart TD\n"
        '    a["a<br/>task.validate · ?"]\n'
        '    b["b<br/>media.store · big"]\n'
        "    a --> b\n"
    )
    assert outline(workflow, {"a": "default"}) == (
        "line v1: 2 stages on 2 levels (stages on one level may run at the same time)\n"
        "1  a  task.validate  default\n"
        "2  b  media.store    big      after a\n"
    )


def test_mermaid_node_ids_stay_unique() -> None:
    workflow = Workflow(
        name="ids",
        version=1,
        stages=(
            Stage(id="a-b", actor="x", needs=()),
            Stage(id="a_b", actor="x", needs=("a-b",)),
            Stage(id="class", actor="x", needs=("a_b",)),
        ),
    )
    lines = mermaid(workflow, {}).splitlines()
    assert [line.split("[")[0].strip() for line in lines[1:4]] == ["a_b", "a_b_2", "class_"]
    assert lines[4:] == ["    a_b --> a_b_2", "    a_b_2 --> class_"]


def test_levels_group_stages_that_may_run_together() -> None:
    assert [[s.id for s in level] for level in levels(small_dag())] == [
        ["validate"],
        ["takes", "sfx"],
        ["mix-down"],
        ["end"],
    ]


def test_levels_refuse_a_cycle() -> None:
    workflow = Workflow(
        name="loop",
        version=1,
        stages=(Stage(id="a", actor="x", needs=("b",)), Stage(id="b", actor="x", needs=("a",))),
    )
    with pytest.raises(ValueError, match="cycle"):
        levels(workflow)


def test_cycles_start_at_the_first_stage_of_each_group() -> None:
    deps = {
        "a": (),
        "b": ("a", "d"),
        "c": ("b",),
        "d": ("c",),
        "e": ("e",),  # a self-edge is not a cycle here
        "f": ("g", "ghost"),  # an unknown name is ignored
        "g": ("f",),
    }
    assert cycles(deps) == [("b", "c", "d", "b"), ("f", "g", "f")]
    assert cycles({"a": (), "b": ("a",), "c": ("a", "b")}) == []


def test_cycles_pick_a_shortest_path() -> None:
    # a -> b -> c -> a and a -> c -> a: the short one is reported.
    assert cycles({"a": ("c",), "b": ("a",), "c": ("b", "a")}) == [("a", "c", "a")]


def test_ancestors() -> None:
    found = ancestors({"a": (), "b": ("a",), "c": ("b",), "d": ("a", "d"), "e": ("ghost",)})
    assert found == {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"a"}, "e": set()}
    assert ancestors({"a": ("b",), "b": ("a",)}) == {"a": {"a", "b"}, "b": {"a", "b"}}


@pytest.mark.parametrize(
    "path", [*sorted(BUILTIN_DIR.glob("*.yaml")), *OK_FILES], ids=lambda p: p.name
)
def test_every_valid_file_renders(path: Path) -> None:
    workflow, _ = check(path)
    assert workflow is not None
    queues = {s.id: s.queue or ACTORS[s.actor] for s in workflow.all_stages}
    chart, text = mermaid(workflow, queues), outline(workflow, queues)
    assert chart.startswith("flowchart TD\n")
    for stage in workflow.all_stages:
        assert f"{stage.actor} · {queues[stage.id]}" in chart
        assert f'"{stage.id}' in chart
        assert stage.id in text
    assert ("subgraph" in chart) == bool(workflow.on_failure or workflow.finally_)
    assert not any(line != line.rstrip() for line in text.splitlines())
