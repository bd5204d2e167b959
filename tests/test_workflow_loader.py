"""The workflow language: loader diagnostics, the built-in workflows, input validation,
expressions, the JSON Schema of the language.

Each file in ``tests/workflows_broken/`` starts with comment lines of the form
``# expect: LINE:COLUMN SEVERITY CODE``; the loader must report exactly those diagnostics for
that file, no more and no fewer. Each file in ``tests/workflows_ok/`` must load without any
diagnostic and validate against the language's JSON Schema.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from core.settings import Settings
from tests.support import ACTOR_OUTPUTS, ACTORS, EXTRA_QUEUES, OK, OK_FILES, check
from workflows.diagnostics import Diagnostic, WorkflowError
from workflows.expressions import (
    FUNCTION_NAMES,
    ExpressionError,
    compile_expression,
    evaluate,
    references,
    truthy,
)
from workflows.graph import levels
from workflows.inputs import InputError, input_json_schema, input_struct, validate_input
from workflows.limits import CONSTANTS, MIN_DURATION_S, MIN_TEMPERATURE
from workflows.loader import (
    BUILTIN_DIR,
    CODES,
    LANGUAGE_SCHEMA_PATH,
    check_file,
    load_workflows,
)
from workflows.spec import RetryPolicy, Workflow

BROKEN = Path(__file__).parent / "workflows_broken"
BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))

_EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+)\s+(error|warning|note)\s+([a-z-]+)\s*$")

# Codes a single file in workflows_broken/ cannot show; each has its own test below.
_CODES_TESTED_ELSEWHERE = {"unreadable-file", "duplicate-workflow", "missing-dir"}

Expected = tuple[int, int, str, str]


def expectations(path: Path) -> list[Expected]:
    """The ``# expect:`` lines of the comment header at the top of ``path``."""
    found: list[Expected] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        if match := _EXPECT.match(line):
            found.append((int(match[1]), int(match[2]), match[3], match[4]))
    return sorted(found)


def observed(diagnostics: list[Diagnostic]) -> list[Expected]:
    return sorted((d.line, d.column, d.severity, d.code) for d in diagnostics)


def builtins(settings: Settings | None = None) -> dict[str, Workflow]:
    return load_workflows(
        [BUILTIN_DIR],
        ACTORS,
        settings or Settings(),
        actor_outputs=ACTOR_OUTPUTS,
        extra_queues=EXTRA_QUEUES,
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- broken files: exact diagnostics ---------------------------------------------------------


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda p: p.name)
def test_broken_file_reports_exactly_its_expected_diagnostics(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' header"
    workflow, diagnostics = check(path)
    assert observed(diagnostics) == expected, "\n".join(d.format() for d in diagnostics)
    if any(severity == "error" for _, _, severity, _ in expected):
        assert workflow is None
    else:
        assert workflow is not None


def test_every_code_is_exercised() -> None:
    in_files = {code for path in BROKEN_FILES for *_, code in expectations(path)}
    assert in_files | _CODES_TESTED_ELSEWHERE == CODES


def test_many_errors_come_back_in_one_run() -> None:
    _, diagnostics = check_file(BROKEN / "many-errors.yaml", ACTORS, Settings())
    assert len(diagnostics) == 8
    assert len({d.code for d in diagnostics}) == 8  # eight different kinds of problem
    assert [d.line for d in diagnostics] == sorted(d.line for d in diagnostics)


def test_unknown_key_hints_at_the_nearest_key() -> None:
    _, diagnostics = check_file(BROKEN / "unknown-key.yaml", ACTORS, Settings())
    hints = {d.message: d.hint for d in diagnostics if d.code == "unknown-key"}
    assert hints["unknown key 'stage' in the workflow"] == "did you mean 'stages'?"
    assert hints["unknown key 'descripton' in the workflow"] == "did you mean 'description'?"
    assert hints["unknown key 'on_error' in the workflow"] == "did you mean 'on_failure'?"


def test_keys_of_other_languages_hint_at_ours() -> None:
    _, diagnostics = check(BROKEN / "key-aliases.yaml")
    hints = {d.message: d.hint for d in diagnostics}
    assert hints == {
        "unknown key 'depends_on' in stage 'generate'": "did you mean 'needs'?",
        "unknown key 'if' in stage 'generate'": "did you mean 'when'?",
        "unknown key 'timeout' in stage 'generate'": "did you mean 'timeout_s'?",
        "unknown key 'backoff' in 'retry' of stage 'generate'": "did you mean 'backoff_max_s'?",
        # A main-stage key in a handler is bad-handler, so no alias leads there.
        "unknown key 'depends_on' in stage 'callback'": (
            "valid keys: id, actor, queue, input, params, retry, timeout_s"
        ),
        "unknown key 'always' in the workflow": "did you mean 'finally'?",
    }


def test_unknown_actor_hints_at_the_nearest_registered_actor() -> None:
    _, diagnostics = check_file(BROKEN / "unknown-actor.yaml", ACTORS, Settings())
    assert [d.hint for d in diagnostics] == ["did you mean 'audio.musicgen'?", None]


def test_unknown_setting_hints_at_the_nearest_setting() -> None:
    _, diagnostics = check_file(BROKEN / "settings-refs.yaml", ACTORS, Settings())
    hints = [d.hint for d in diagnostics if d.code == "unknown-setting"]
    assert hints == ["did you mean '$MAX_PROMPT_LEN'?", "did you mean '$MAX_DURATION'?"]


def test_timeout_message_names_the_limit() -> None:
    _, diagnostics = check_file(BROKEN / "broker-limit.yaml", ACTORS, Settings())
    timeout = next(d for d in diagnostics if d.code == "timeout-over-broker-limit")
    assert "3600" in timeout.message
    assert "1800" in timeout.message
    assert timeout.hint is not None
    assert "consumer_timeout" in timeout.hint


def test_deadline_is_a_positive_number_of_seconds(tmp_path: Path) -> None:
    source = (BUILTIN_DIR / "text2music.yaml").read_text()
    with_deadline = source.replace("version: 1\n", "version: 1\ndeadline_s: 120\n", 1)
    assert with_deadline != source
    workflow, _ = check_file(write(tmp_path, "text2music", with_deadline), ACTORS, Settings())
    assert workflow is not None
    assert (workflow.deadline_s, workflow.deadline(3600.0)) == (120.0, 120.0)
    plain, _ = check_file(BUILTIN_DIR / "text2music.yaml", ACTORS, Settings())
    assert plain is not None
    assert plain.deadline(3600.0) == 3600.0
    zero = source.replace("version: 1\n", "version: 1\ndeadline_s: 0\n", 1)
    workflow, diagnostics = check_file(write(tmp_path, "text2music", zero), ACTORS, Settings())
    assert workflow is None
    assert [d.code for d in diagnostics] == ["out-of-range"]


def test_broker_limit_is_a_parameter() -> None:
    # The built-in generate stages allow 900 s: fine under 30 min, too long under 10.
    _, diagnostics = check_file(
        BUILTIN_DIR / "text2music.yaml", ACTORS, Settings(), broker_ack_timeout_s=600
    )
    assert [d.code for d in diagnostics] == ["timeout-over-broker-limit"]


def test_warnings_alone_still_give_a_workflow() -> None:
    workflow, diagnostics = check_file(BROKEN / "other-name.yaml", ACTORS, Settings())
    assert workflow is not None
    assert workflow.name == "name-mismatch"
    assert [d.severity for d in diagnostics] == ["warning"]


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.yaml", "# nothing here\n")
    workflow, diagnostics = check_file(path, ACTORS, Settings())
    assert workflow is None
    assert observed(diagnostics) == [(1, 1, "error", "not-a-mapping")]


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    workflow, diagnostics = check_file(path, ACTORS, Settings())
    assert workflow is None
    assert observed(diagnostics) == [(1, 1, "error", "unreadable-file")]


# --- diagnostics and WorkflowError -----------------------------------------------------------


def test_diagnostic_format() -> None:
    plain = Diagnostic(
        file="a.yaml", line=3, column=5, severity="error", code="unknown-key", message="m"
    )
    assert plain.format() == "a.yaml:3:5: error unknown-key: m"
    hinted = Diagnostic(
        file="a.yaml", line=1, column=1, severity="warning", code="c", message="m", hint="h"
    )
    assert hinted.format() == "a.yaml:1:1: warning c: m\n  hint: h"


def test_workflow_error_lists_every_diagnostic(tmp_path: Path) -> None:
    shutil.copy(BROKEN / "many-errors.yaml", tmp_path)
    shutil.copy(BROKEN / "empty-stages.yaml", tmp_path)
    with pytest.raises(WorkflowError) as caught:
        load_workflows([tmp_path], ACTORS, Settings())
    diagnostics = caught.value.diagnostics
    assert len(diagnostics) == 9
    text = str(caught.value)
    for diagnostic in diagnostics:
        assert diagnostic.format() in text
    assert f"{tmp_path / 'empty-stages.yaml'}:5:9: error empty-stages:" in text


# --- load_workflows --------------------------------------------------------------------------


def test_builtins_load_clean() -> None:
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        workflow, diagnostics = check_file(path, ACTORS, Settings())
        assert diagnostics == [], "\n".join(d.format() for d in diagnostics)
        assert workflow is not None
    assert sorted(builtins()) == sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
    assert {"text2music", "text2sound"} <= set(builtins())


def test_builtin_text2music_shape() -> None:
    workflow = builtins()["text2music"]
    assert workflow.version == 1
    assert [stage.id for stage in workflow.stages] == [
        "validate",
        "generate",
        "visualize",
        "store",
        "aggregate",
        "callback",
    ]
    generate = workflow.stage("generate")
    assert (generate.actor, generate.queue) == ("audio.musicgen", "musicgen")
    assert generate.timeout_s == 900
    assert generate.retry == RetryPolicy(max_attempts=3, backoff_initial_s=2, backoff_max_s=60)
    validate = workflow.stage("validate")
    assert (validate.queue, validate.params, validate.timeout_s) == (None, {}, None)
    assert validate.retry == RetryPolicy()
    assert workflow.outputs["audio"].type == "audio"
    assert workflow.source.endswith("text2music.yaml")


def test_builtin_text2sound_uses_audiogen() -> None:
    workflow = builtins()["text2sound"]
    generate = workflow.stage("generate")
    assert (generate.actor, generate.queue) == ("audio.audiogen", "audiogen")
    assert workflow.input["duration"].default == 5


def test_settings_flow_into_the_loaded_limits() -> None:
    workflow = builtins(Settings(max_duration=12, max_prompt_len=50))["text2music"]
    assert workflow.input["duration"].maximum == 12
    assert workflow.input["prompt"].max_length == 50


def test_yml_files_and_several_folders(tmp_path: Path) -> None:
    text = (BUILTIN_DIR / "text2music.yaml").read_text(encoding="utf-8")
    extra = text.replace("name: text2music", "name: remix").replace("version: 1", "version: 2")
    write(tmp_path, "remix.yml", extra)
    write(tmp_path, "notes.txt", "not a workflow")
    workflows = load_workflows([BUILTIN_DIR, tmp_path], ACTORS, Settings())
    assert set(workflows) == {"remix", *builtins()}
    assert workflows["remix"].version == 2


def test_duplicate_workflow_names_both_files(tmp_path: Path) -> None:
    copy = shutil.copy(BUILTIN_DIR / "text2music.yaml", tmp_path / "text2music.yaml")
    with pytest.raises(WorkflowError) as caught:
        load_workflows([BUILTIN_DIR, tmp_path], ACTORS, Settings())
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "duplicate-workflow"
    assert (diagnostic.file, diagnostic.line, diagnostic.column) == (str(copy), 2, 7)
    assert str(BUILTIN_DIR / "text2music.yaml") in diagnostic.message


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(WorkflowError) as caught:
        load_workflows([BUILTIN_DIR, missing], ACTORS, Settings())
    assert observed(caught.value.diagnostics) == [(1, 1, "error", "missing-dir")]
    assert caught.value.diagnostics[0].file == str(missing)


def test_warnings_do_not_stop_a_load(tmp_path: Path) -> None:
    shutil.copy(BROKEN / "other-name.yaml", tmp_path)
    assert list(load_workflows([tmp_path], ACTORS, Settings())) == ["name-mismatch"]


# --- input schema and validation -------------------------------------------------------------


def test_json_schema_of_text2music() -> None:
    schema = input_json_schema(builtins(Settings(max_duration=12))["text2music"])
    assert "$ref" not in schema
    assert "$defs" not in schema
    assert schema["type"] == "object"
    assert schema["title"] == "Text2musicInput"
    assert schema["description"] == "Text to music with MusicGen."
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False
    prompt, duration = schema["properties"]["prompt"], schema["properties"]["duration"]
    assert prompt == {
        "type": "string",
        "description": "What the music should sound like.",
        "minLength": 1,
        "maxLength": 100,
    }
    assert duration == {
        "type": "number",
        "description": (
            "Length of the audio, in seconds: at least one 20 ms frame (the models decode 50 "
            "frames a second); the audio may come out up to one frame shorter."
        ),
        "minimum": 0.02,  # $MIN_DURATION
        "maximum": 12,
        "default": 8,
    }
    assert schema["properties"]["temperature"]["minimum"] == 0.01  # $MIN_TEMPERATURE


def test_input_struct_is_cached() -> None:
    workflow = builtins()["text2music"]
    assert input_struct(workflow) is input_struct(workflow)
    assert input_struct(workflow) is not input_struct(builtins()["text2sound"])


def test_validate_input_fills_defaults() -> None:
    workflow = builtins()["text2music"]
    body = validate_input(workflow, {"prompt": "lofi beats"})
    assert body["prompt"] == "lofi beats"
    assert body["duration"] == 8.0
    assert isinstance(body["duration"], float)
    assert body["seed"] == -1  # every default is filled in
    assert validate_input(workflow, {"prompt": "x", "duration": 30})["duration"] == 30.0
    assert validate_input(builtins()["text2sound"], {"prompt": "rain"})["duration"] == 5.0


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"prompt": ""}, "input.prompt", "must not be empty"),
        ({"prompt": "x" * 101}, "input.prompt", "must be at most 100 characters long"),
        ({"prompt": "x", "duration": 0}, "input.duration", "must be at least 0.02"),
        ({"prompt": "x", "duration": 0.005}, "input.duration", "must be at least 0.02"),
        ({"prompt": "x", "temperature": 1e-300}, "input.temperature", "must be at least 0.01"),
        ({"prompt": "x", "duration": 30.5}, "input.duration", "must be at most 30"),
        ({"prompt": "x", "duration": "8"}, "input.duration", "must be a number, not a string"),
        ({"prompt": "x", "duration": True}, "input.duration", "must be a number, not a boolean"),
        ({"duration": 8}, "input.prompt", "is required"),
        ({"prompt": "x", "speed": 1}, "input.speed", "is not allowed"),
        ({"prompt": 3}, "input.prompt", "must be a string, not an integer"),
        (["prompt"], "input", "must be an object, not an array"),
    ],
)
def test_validate_input_rejects(body: object, field: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_input(builtins()["text2music"], body)
    assert (caught.value.field, caught.value.message) == (field, message)
    assert str(caught.value) == f"{field} {message}"


def test_validate_input_follows_the_settings() -> None:
    workflow = builtins(Settings(max_duration=12))["text2music"]
    assert validate_input(workflow, {"prompt": "x", "duration": 12})["duration"] == 12
    with pytest.raises(InputError, match="must be at most 12"):
        validate_input(workflow, {"prompt": "x", "duration": 12.5})


def test_a_lower_max_duration_lowers_the_builtin_defaults() -> None:
    # MAX_DURATION=5 under the built-ins' default of 8: the default becomes 5 (a note), the
    # service starts, and a request without a duration asks for 5 s.
    workflows = builtins(Settings(max_duration=5))
    for name in ("text2music", "soundtrack", "variations", "continuation"):
        field = workflows[name].input["duration"]
        assert (field.default, field.maximum) == (5, 5), name
    assert validate_input(workflows["text2music"], {"prompt": "x"})["duration"] == 5
    assert workflows["text2sound"].input["duration"].default == 5  # its own default


def test_a_clamped_default_is_a_note_and_the_file_loads(tmp_path: Path) -> None:
    workflow, diagnostics = check(BROKEN / "default-clamped.yaml")
    assert workflow is not None
    assert workflow.input["duration"].default == 30
    assert workflow.input["steps"].default == 100
    assert isinstance(workflow.input["steps"].default, int)
    assert [d.severity for d in diagnostics] == ["note", "note"]
    assert "(45) is beyond the limit 30 ($MAX_DURATION): it becomes 30" in diagnostics[0].message


def test_duration_limits_everywhere_on_a_grid() -> None:
    """Property-style: a duration passes exactly when one frame <= duration <= MAX_DURATION."""
    workflow = builtins(Settings(max_duration=20))["text2music"]
    for duration in [t / 10 for t in range(-20, 260, 7)] + [0.0199999, 0.02, 0.0200001]:
        accepted = True
        try:
            validate_input(workflow, {"prompt": "x", "duration": duration})
        except InputError:
            accepted = False
        assert accepted == (MIN_DURATION_S <= duration <= 20), duration


def test_every_builtin_duration_and_temperature_has_the_generation_floor() -> None:
    """Issue 10: what the schema accepts must generate, in every built-in workflow."""
    floors = {"duration": MIN_DURATION_S, "temperature": MIN_TEMPERATURE}
    seen = set()
    for name, workflow in builtins().items():
        for field, floor in floors.items():
            if field in workflow.input:
                seen.add(field)
                spec = workflow.input[field]
                assert (spec.minimum, spec.exclusive_minimum) == (floor, None), (name, field)
    assert seen == set(floors)


def test_floor_names_resolve_like_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "floors.yaml",
        """\
name: floors
version: 1
input:
  duration: {type: number, minimum: $MIN_DURATION, default: 0.01}
  temperature: {type: number, minimum: $MIN_TEMPERATUR, default: 1}
stages:
  - id: validate
    actor: task.validate
""",
    )
    _, diagnostics = check_file(path, ACTORS, Settings())
    assert [(d.code, d.hint) for d in diagnostics if d.code == "unknown-setting"] == [
        ("unknown-setting", "did you mean '$MIN_TEMPERATURE'?")
    ]
    [default] = [d for d in diagnostics if d.code == "bad-default"]
    assert "0.02 ($MIN_DURATION)" in default.message


def test_docs_list_the_floors_with_their_values() -> None:
    """docs/workflows.md cannot import workflows/limits.py; this keeps its table in step."""
    docs = (Path(__file__).parent.parent / "docs" / "workflows.md").read_text(encoding="utf-8")
    for name, value in CONSTANTS.items():
        assert f"| `${name}` | {value:g} |" in docs, name


def test_enum_and_integer_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "styled.yaml",
        """\
name: styled
version: 1
input:
  style: {type: string, enum: [jazz, rock], default: jazz}
  steps: {type: integer, minimum: 1, maximum: $MAX_PROMPT_LEN, default: 4}
  loud: {type: boolean, default: false}
stages:
  - {id: generate, actor: audio.musicgen, params: {top_k: 250, tags: [a, b]}}
""",
    )
    workflow, diagnostics = check_file(path, ACTORS, Settings())
    assert diagnostics == []
    assert workflow is not None
    assert workflow.stages[0].params == {"top_k": 250, "tags": ["a", "b"]}
    assert validate_input(workflow, {}) == {"style": "jazz", "steps": 4, "loud": False}
    with pytest.raises(InputError) as caught:
        validate_input(workflow, {"style": "pop"})
    assert (caught.value.field, caught.value.message) == (
        "input.style",
        "must be one of 'jazz', 'rock'",
    )
    with pytest.raises(InputError) as caught:
        validate_input(workflow, {"steps": 2.5})
    assert caught.value.field == "input.steps"
    schema = input_json_schema(workflow)["properties"]
    assert schema["style"] == {"enum": ["jazz", "rock"], "default": "jazz"}
    assert schema["steps"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 4}


# --- the DAG language: valid files -----------------------------------------------------------


@pytest.mark.parametrize("path", OK_FILES, ids=lambda p: p.name)
def test_ok_file_loads_clean(path: Path) -> None:
    workflow, diagnostics = check(path)
    assert diagnostics == [], "\n".join(d.format() for d in diagnostics)
    assert workflow is not None
    assert workflow.name == path.stem


def ok(name: str) -> Workflow:
    workflow, diagnostics = check(OK / f"{name}.yaml")
    assert workflow is not None, "\n".join(d.format() for d in diagnostics)
    return workflow


def test_stages_without_needs_run_after_the_stage_before() -> None:
    workflow = builtins()["text2music"]
    previous: tuple[str, ...] = ()
    for stage in workflow.stages:
        assert (stage.needs, stage.needs_explicit) == (previous, False)
        previous = (stage.id,)
    assert (workflow.on_failure, workflow.finally_) == ((), ())


def test_diamond_needs_are_resolved() -> None:
    workflow = ok("diamond")
    needs = {stage.id: (stage.needs, stage.needs_explicit) for stage in workflow.stages}
    assert needs == {
        "validate": ((), False),
        "music": (("validate",), True),
        "sfx": (("validate",), True),
        "mix": (("music", "sfx"), True),
        "store": (("mix",), False),
        "aggregate": (("store",), False),
    }
    assert [s.id for s in workflow.dependents("validate")] == ["music", "sfx"]
    assert [[s.id for s in level] for level in levels(workflow)] == [
        ["validate"],
        ["music", "sfx"],
        ["mix"],
        ["store"],
        ["aggregate"],
    ]
    mix = workflow.stage("mix")
    assert mix.input == {
        "tracks": "[stages.music.media[0], stages.sfx.media[0]]",
        "levels": "`[0.8, 0.5]`",
    }


def test_an_empty_needs_makes_a_parallel_root() -> None:
    workflow = ok("conditional")
    ambience = workflow.stage("ambience")
    assert (ambience.needs, ambience.needs_explicit) == ((), True)
    assert ambience.when == "input.ambience != ''"
    assert workflow.stage("visualize").when == "input.pictures"
    assert workflow.stage("store").needs == ("generate", "visualize", "ambience")
    assert [s.id for s in levels(workflow)[0]] == ["validate", "ambience"]


def test_foreach_stage_fields() -> None:
    takes = ok("fanout").stage("takes")
    assert takes.foreach == "range(input.takes)"
    assert takes.max_concurrency == 2
    assert takes.queue == "musicgen-large"
    assert takes.input["seed"] == "seed(input.seed, index)"
    assert takes.retry == RetryPolicy(
        max_attempts=4,
        backoff_initial_s=1,
        backoff_factor=3,
        backoff_max_s=30,
        jitter=False,
        retry_on=("TimeoutError", "model_unavailable"),
    )
    assert isinstance(takes.retry.backoff_factor, float)
    assert ok("fanout").stage("store").max_concurrency is None


def test_retry_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.backoff_factor, policy.jitter, policy.retry_on) == (2.0, True, ("*",))
    assert builtins()["text2music"].stage("generate").retry.retry_on == ("*",)


def test_handlers() -> None:
    workflow = ok("handlers")
    assert [s.id for s in workflow.on_failure] == ["cleanup"]
    assert [s.id for s in workflow.finally_] == ["callback"]
    cleanup = workflow.stage("cleanup")  # stage() finds handlers too
    assert cleanup.input == {"media": "stages.generate.media", "prompt": "input.prompt"}
    assert (cleanup.needs, cleanup.when, cleanup.foreach) == ((), None, None)
    callback = workflow.stage("callback")
    assert callback.retry.retry_on == ("http_5xx", "rate_limited", "httpx.TransportError")
    assert [s.id for s in workflow.all_stages] == [
        "validate",
        "generate",
        "store",
        "aggregate",
        "cleanup",
        "callback",
    ]
    # "finally" is the key in JSON, as in YAML.
    data = msgspec.to_builtins(workflow)
    assert "finally" in data
    assert "finally_" not in data
    assert data["finally"][0]["id"] == "callback"


def test_builtin_dag_workflows_use_the_language() -> None:
    workflows = builtins()
    if "soundtrack" in workflows:
        assert workflows["soundtrack"].stage("mix").needs == ("music", "sfx")
    if "variations" in workflows:
        assert workflows["variations"].stage("takes").foreach is not None


# --- the DAG language: what the checks say ---------------------------------------------------


def diagnostics_of(name: str, **options: Any) -> list[Diagnostic]:
    return check(BROKEN / name, **options)[1]


def test_cycle_names_its_path() -> None:
    messages = [d.message for d in diagnostics_of("cycle.yaml")]
    assert messages == [
        "stages wait on each other: first -> second -> third -> first",
        "stages wait on each other: store -> aggregate -> store",
    ]
    hints = [d.hint or "" for d in diagnostics_of("cycle.yaml")]
    assert "drop one of these needs" in hints[0]
    assert "runs after the stage before it" in hints[1]


def test_dangling_need_hints() -> None:
    hints = [d.hint for d in diagnostics_of("dangling-need.yaml")]
    assert hints == [
        "did you mean 'validate'?",
        "handlers run after the task has ended; no stage can wait for one",
        "stages: validate, generate, store",
    ]


def test_not_upstream_hints_say_how_to_fix_it() -> None:
    by_line = {d.line: d for d in diagnostics_of("not-upstream.yaml")}
    sibling, downstream = by_line[17], by_line[21]
    assert sibling.hint == "make 'sfx' wait for it: needs: [validate, music]"
    assert downstream.hint == "'store' runs after 'mix': it needs it, directly or not"
    line_22 = [d.message for d in diagnostics_of("not-upstream.yaml") if d.line == 22]
    assert len(line_22) == 2
    assert "the output of its own stage" in line_22[0]
    assert "stages.callback, a handler" in line_22[1]


def test_unknown_reference_hints() -> None:
    hints = [d.hint or "" for d in diagnostics_of("unknown-reference.yaml")]
    assert hints[0] == "did you mean 'input.prompt'?"
    assert hints[1] == "did you mean 'input'?"
    assert "\"'jazz'\"" in hints[2]  # how to write a string literal
    assert hints[3] == "did you mean 'validate'?"
    assert hints[4] == "input fields: prompt, duration"


def test_unknown_output_hints() -> None:
    hints = [d.hint for d in diagnostics_of("unknown-output.yaml")]
    assert hints == [
        "read stages.takes[*].media",
        "did you mean 'stages.mix.media'?",
        "it returns no fields",
        "it returns outputs",
    ]


def test_outputs_are_checked_only_for_actors_that_declare_them() -> None:
    codes = [d.code for d in diagnostics_of("unknown-output.yaml", actor_outputs=None)]
    assert codes == ["unknown-output"]  # the foreach list needs no declared outputs
    some = {"audio.mix": ("media",)}
    lines = [d.line for d in diagnostics_of("unknown-output.yaml", actor_outputs=some)]
    assert lines == [17, 22]


def test_extra_queues_are_a_parameter() -> None:
    with_extra = [d.line for d in diagnostics_of("unknown-queue.yaml")]
    without = [d.line for d in diagnostics_of("unknown-queue.yaml", extra_queues=())]
    assert without == sorted([*with_extra, 13])
    hint = diagnostics_of("unknown-queue.yaml")[-1].hint
    assert hint == "known queues: audiogen, callbacks, default, musicgen, musicgen-large"


def test_bad_expression_messages_and_hints() -> None:
    found = diagnostics_of("bad-expression.yaml")
    by_line = {d.line: d for d in found}
    assert by_line[21].message.endswith("the expression is incomplete")
    assert by_line[24].hint == "did you mean 'length'?"
    assert "max() takes 1 argument, not 2" in by_line[25].message
    assert by_line[26].hint is not None
    assert "no arithmetic" in by_line[26].hint
    assert by_line[27].hint == 'a name with "-" must be quoted in an expression: "my-stage"'
    assert "`3`" in by_line[28].message
    assert by_line[29].hint == 'a fixed value is a JMESPath literal inside a YAML string: "`0.5`"'


def test_expression_columns_fall_back_to_the_scalar_with_escapes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "escapes.yaml",
        """\
name: escapes
version: 1
stages:
  - id: validate
    actor: task.validate
    when: "input.\\u0078 =="
  - id: store
    actor: media.store
    when: 'input.x ==  '
""",
    )
    _, diagnostics = check(path)
    # Escapes: the start of the scalar; a single-quoted one without escapes: the offset.
    assert observed(diagnostics) == [
        (6, 11, "error", "bad-expression"),
        (9, 24, "error", "bad-expression"),
    ]


def test_dag_errors_come_back_in_one_run() -> None:
    found = diagnostics_of("dag-many-errors.yaml")
    assert len(found) == 10
    assert len({d.code for d in found}) == 10
    assert {d.code for d in found} >= {"dangling-need", "cycle", "not-upstream", "bad-handler"}


def test_load_workflows_passes_the_new_options(tmp_path: Path) -> None:
    shutil.copy(OK / "fanout.yaml", tmp_path)
    with pytest.raises(WorkflowError) as caught:
        load_workflows([tmp_path], ACTORS, Settings())
    assert [d.code for d in caught.value.diagnostics] == ["unknown-queue"]
    loaded = load_workflows(
        [tmp_path], ACTORS, Settings(), actor_outputs=ACTOR_OUTPUTS, extra_queues=EXTRA_QUEUES
    )
    assert list(loaded) == ["fanout"]


# --- property-style: random DAGs -------------------------------------------------------------


def _random_dag(rng: random.Random, size: int) -> tuple[str, dict[str, tuple[str, ...]]]:
    """A random acyclic workflow: each stage needs some earlier stages, or leaves needs out
    (then it needs the stage before it). Returns the YAML and the expected needs."""
    ids = [f"s{i}" for i in range(size)]
    lines = ["name: dag", "version: 1", "input:", "  n: {type: integer, default: 1}", "stages:"]
    expected: dict[str, tuple[str, ...]] = {}
    for i, stage in enumerate(ids):
        lines += [f"  - id: {stage}", "    actor: task.validate"]
        if i and rng.random() < 0.3:
            expected[stage] = (ids[i - 1],)
        else:
            needs = tuple(rng.sample(ids[:i], rng.randint(0, min(i, 3))))
            expected[stage] = needs
            lines.append(f"    needs: [{', '.join(needs)}]")
    return "\n".join(lines) + "\n", expected


def _upstream(expected: dict[str, tuple[str, ...]], stage: str) -> set[str]:
    seen: set[str] = set()
    todo = list(expected[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(expected[name])
    return seen


@pytest.mark.parametrize("seed", range(25))
def test_random_dags_load_with_their_needs(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    text, expected = _random_dag(rng, rng.randint(1, 12))
    workflow, diagnostics = check(write(tmp_path, "dag.yaml", text))
    assert diagnostics == []
    assert workflow is not None
    assert {s.id: s.needs for s in workflow.stages} == expected
    depth = {s.id: n for n, level in enumerate(levels(workflow)) for s in level}
    for stage in workflow.stages:
        assert all(depth[need] < depth[stage.id] for need in stage.needs)


@pytest.mark.parametrize("seed", range(25))
def test_random_reads_are_upstream_exactly_when_reachable(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    text, expected = _random_dag(rng, rng.randint(2, 10))
    ids = list(expected)
    reader, target = ids[-1], rng.choice(ids[:-1])
    text += f"    input: {{x: stages.{target}, n: input.n}}\n"  # the last stage's
    _, diagnostics = check(write(tmp_path, "dag.yaml", text))
    codes = [d.code for d in diagnostics]
    assert codes == ([] if target in _upstream(expected, reader) else ["not-upstream"])


@pytest.mark.parametrize("seed", range(25))
def test_random_back_edges_are_cycles(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    text, expected = _random_dag(rng, rng.randint(2, 10))
    ids = list(expected)
    last, victim = ids[-1], rng.choice(ids[:-1])
    # victim now needs the last stage: a cycle exactly when the last stage needs victim.
    lines = text.splitlines()
    at = lines.index(f"  - id: {victim}") + 2
    graph = dict(expected)
    if at < len(lines) and lines[at].startswith("    needs: ["):
        lines[at] = lines[at].replace("needs: [", f"needs: [{last}, ").replace(", ]", "]")
        graph[victim] = (last, *expected[victim])
    else:
        lines.insert(at, f"    needs: [{last}]")
        graph[victim] = (last,)
    _, diagnostics = check(write(tmp_path, "dag.yaml", "\n".join(lines) + "\n"))
    in_cycle = victim in _upstream(expected, last)
    assert [d.code for d in diagnostics] == (["cycle"] if in_cycle else [])
    for found in diagnostics:
        path = found.message.split(": ", 1)[1].split(" -> ")
        assert path[0] == path[-1]
        assert len(path) == len(set(path)) + 1
        assert all(a in graph[b] for a, b in itertools.pairwise(path))  # b needs a


# --- expressions -----------------------------------------------------------------------------


def test_expressions_evaluate_with_the_extra_functions() -> None:
    context = {"input": {"takes": 3, "seed": 7}, "stages": {"a": {"media": ["k1", "k2"]}}}
    assert evaluate("range(input.takes)", context) == [0, 1, 2]
    assert evaluate(compile_expression("stages.a.media[0]"), context) == "k1"
    first = evaluate("seed(input.seed, `1`)", context)
    assert first == evaluate("seed(input.seed, `1`)", context) != evaluate("seed(`7`, `2`)", {})
    assert 0 <= first < 2**31
    assert evaluate("range(`3.0`)", {}) == [0, 1, 2]
    assert {"range", "seed", "length"} <= set(FUNCTION_NAMES)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("range(`-1`)", "range() takes 0 to 1000, not -1"),
        ("range(`1001`)", "range() takes 0 to 1000, not 1001"),
        ("range(`1.5`)", "range() takes whole numbers, not 1.5"),
        ("seed(`1.5`, `0`)", "seed() takes whole numbers, not 1.5"),
        ("sum(input.names)", "invalid type"),
        ("range('3')", "invalid type"),
    ],
)
def test_evaluation_errors_are_expression_errors(source: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(source, {"input": {"names": ["a"]}})
    assert message in str(caught.value)
    assert caught.value.offset is None


@pytest.mark.parametrize(
    ("source", "offset", "message"),
    [
        ("", 0, "the expression is empty"),
        ("stages.", 7, "the expression ends too early"),
        ("a ==", 4, "the expression is incomplete"),
        ("input.x > 3", 10, "write numbers as literals"),
        ("x | lenght(@)", 4, "unknown function lenght()"),
        ("length(a, b)", 0, "length() takes 1 argument, not 2"),
        ("not_null()", 0, "not_null() takes at least 1 argument, not 0"),
        ("'open", 0, "unclosed ' delimiter"),
    ],
)
def test_compile_errors_carry_the_offset(source: str, offset: int, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source)
    assert caught.value.offset == offset
    assert message in caught.value.message


def test_compiled_expressions_are_cached() -> None:
    assert compile_expression("input.a") is compile_expression("input.a")


@pytest.mark.parametrize(
    ("source", "paths"),
    [
        ("stages.music.media", {("stages", "music", "media")}),
        ("stages.takes[*].media", {("stages", "takes")}),
        ("stages.takes[0].media", {("stages", "takes")}),
        ("stages.takes[].media[]", {("stages", "takes")}),
        ("length(input.tags) > `3`", {("input", "tags")}),
        ("input.{a: x, b: y}", {("input", "x"), ("input", "y")}),
        ("stages.a | b", {("stages", "a", "b")}),
        ("stages.a.items[?score > `3`].x", {("stages", "a", "items")}),
        ("sort_by(stages.a, &x)", {("stages", "a")}),
        ("@.input.x", {("input", "x")}),
        ('stages."my-stage".x', {("stages", "my-stage", "x")}),
        ("!item || index", {("item",), ("index",)}),
        ("stages.*.x", {("stages",)}),
        ("'text'", set()),
        ("@", set()),
        ("input.a || input", {("input", "a")}),
    ],
)
def test_references(source: str, paths: set[tuple[str, ...]]) -> None:
    assert references(compile_expression(source)) == paths


def test_truthy_is_jmespaths() -> None:
    assert [truthy(v) for v in (None, False, "", [], {})] == [False] * 5
    assert [truthy(v) for v in (0, 0.0, True, "x", [0], {"a": None})] == [True] * 6


# --- the JSON Schema of the language ---------------------------------------------------------


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(LANGUAGE_SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def _tiny_validate(value: Any, schema: Any, root: dict[str, Any], at: str = "$") -> list[str]:
    """The part of JSON Schema 2020-12 the language's schema uses, for when the jsonschema
    package is not installed (it is only a dependency of a dev tool)."""
    if schema is True:
        return []
    if schema is False:
        return [f"{at}: not allowed"]
    errors: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        errors += _tiny_validate(value, target, root, at)
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
        "integer": int,
        "number": (int, float),
    }
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        fits = any(
            isinstance(value, kinds[t]) and (t == "boolean" or not isinstance(value, bool))
            for t in types
        )
        if not fits:
            return [*errors, f"{at}: not of type {types}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{at}: not {schema['const']!r}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{at}: does not match {schema['pattern']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{at}: too short")
    if isinstance(value, int | float) and not isinstance(value, bool):
        checks = {
            "minimum": value < schema.get("minimum", value),
            "maximum": value > schema.get("maximum", value),
            "exclusiveMinimum": "exclusiveMinimum" in schema
            and value <= schema["exclusiveMinimum"],
            "exclusiveMaximum": "exclusiveMaximum" in schema
            and value >= schema["exclusiveMaximum"],
        }
        errors += [f"{at}: breaks {key}" for key, broken in checks.items() if broken]
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{at}: too few items")
        if schema.get("uniqueItems") and len({json.dumps(v) for v in value}) < len(value):
            errors.append(f"{at}: repeated items")
        for i, item in enumerate(value):
            errors += _tiny_validate(item, schema.get("items", True), root, f"{at}[{i}]")
    if isinstance(value, dict):
        errors += [
            f"{at}: {key} is required" for key in schema.get("required", ()) if key not in value
        ]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if "propertyNames" in schema:
                errors += _tiny_validate(key, schema["propertyNames"], root, f"{at}.{key}")
            sub = properties.get(key, schema.get("additionalProperties", True))
            errors += _tiny_validate(item, sub, root, f"{at}.{key}")
        for key, needed in schema.get("dependentRequired", {}).items():
            if key in value:
                errors += [f"{at}: {key} needs {n}" for n in needed if n not in value]
    for sub in schema.get("allOf", ()):
        errors += _tiny_validate(value, sub, root, at)
    if "anyOf" in schema and all(_tiny_validate(value, s, root, at) for s in schema["anyOf"]):
        errors.append(f"{at}: matches none of anyOf")
    if "not" in schema and not _tiny_validate(value, schema["not"], root, at):
        errors.append(f"{at}: matches 'not'")
    if "if" in schema and not _tiny_validate(value, schema["if"], root, at):
        errors += _tiny_validate(value, schema.get("then", True), root, at)
    return errors


def _schema_errors(value: Any) -> list[str]:
    """Errors from jsonschema when it is installed, and always from the tiny validator (the
    two must agree on whether there is any)."""
    schema = _schema()
    tiny = _tiny_validate(value, schema, schema)
    try:
        import jsonschema
    except ImportError:
        return tiny
    full = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]
    assert bool(full) == bool(tiny), (full, tiny)
    return full


def test_language_schema_is_a_json_schema() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert schema["required"] == ["name", "version", "stages"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "name", "version", "description", "deadline_s", "input", "outputs", "stages",
        "on_failure", "finally",
    }  # fmt: skip
    stage = schema["$defs"]["stage"]
    assert list(stage["properties"]) == [
        "id", "actor", "queue", "needs", "when", "foreach", "max_concurrency", "input",
        "params", "retry", "timeout_s",
    ]  # fmt: skip
    handler = schema["$defs"]["handler"]
    assert set(handler["properties"]) == set(stage["properties"]) - {
        "needs", "when", "foreach", "max_concurrency"
    }  # fmt: skip

    # Every key has a description, and every object says which keys it takes.
    def walk(node: Any, at: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert "additionalProperties" in node, at
                for key, sub in node["properties"].items():
                    assert sub is False or "description" in sub or "$ref" in sub, f"{at}.{key}"
            for key, sub in node.items():
                if key not in ("allOf", "not"):  # conditions on the keys, not new objects
                    walk(sub, f"{at}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{at}[{i}]")

    for name in ("stage", "handler", "retry", "inputField", "output"):
        walk(schema["$defs"][name], name)
    walk({k: v for k, v in schema.items() if k != "$defs"}, "$")
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    "path", [*sorted(BUILTIN_DIR.glob("*.yaml")), *OK_FILES], ids=lambda p: p.name
)
def test_valid_files_validate_against_the_schema(path: Path) -> None:
    assert _schema_errors(yaml.safe_load(path.read_text(encoding="utf-8"))) == []


@pytest.mark.parametrize(
    "name",
    [
        "unknown-key.yaml",
        "key-aliases.yaml",
        "bad-handler.yaml",
        "foreach-required.yaml",
        "retry-policy.yaml",
        "wrong-type.yaml",
        "bad-name.yaml",
        "input-schema.yaml",
    ],
)
def test_the_schema_rejects_what_editors_can_catch(name: str) -> None:
    assert _schema_errors(yaml.safe_load((BROKEN / name).read_text(encoding="utf-8")))


def test_the_tiny_validator_sees_each_kind_of_problem() -> None:
    base: dict[str, Any] = {"name": "x", "version": 1, "stages": [{"id": "a", "actor": "b"}]}
    assert _schema_errors(base) == []
    broken: list[dict[str, Any]] = [
        {**base, "version": 0},
        {**base, "extra": 1},
        {**base, "stages": []},
        {**base, "stages": [{"id": "a"}]},
        {**base, "stages": [{"id": "a", "actor": "b", "max_concurrency": 2}]},
        {**base, "stages": [{"id": "A", "actor": "b"}]},
        {**base, "input": {"x": {"type": "boolean", "maximum": 3}}},
        {**base, "input": {"x": {"type": "number", "minimum": 1, "exclusive_minimum": 0}}},
        {**base, "input": {"x": {"type": "number", "maximum": "$lower"}}},
        {**base, "finally": [{"id": "c", "actor": "d", "needs": []}]},
        {**base, "stages": [{"id": "a", "actor": "b", "retry": {"retry_on": ["a", "a"]}}]},
        {**base, "stages": [{"id": "a", "actor": "b", "retry": {"jitter": 1}}]},
    ]
    for value in broken:
        assert _schema_errors(value), value
