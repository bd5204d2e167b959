"""The workflow language: loader diagnostics, the built-in workflows, input validation.

Each file in ``tests/workflows_broken/`` starts with comment lines of the form
``# expect: LINE:COLUMN SEVERITY CODE``; the loader must report exactly those diagnostics for
that file, no more and no fewer.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from aimarket.settings import Settings
from workflows.diagnostics import Diagnostic, WorkflowError
from workflows.inputs import InputError, input_json_schema, input_struct, validate_input
from workflows.loader import BUILTIN_DIR, CODES, check_file, load_workflows
from workflows.spec import RetryPolicy, Workflow

BROKEN = Path(__file__).parent / "workflows_broken"
BROKEN_FILES = sorted(BROKEN.glob("*.yaml"))

ACTORS = {
    "task.validate": "default",
    "audio.musicgen": "musicgen",
    "audio.audiogen": "audiogen",
    "media.store": "default",
    "media.visualize": "default",
    "task.aggregate": "default",
    "task.callback": "callbacks",
}

_EXPECT = re.compile(r"#\s*expect:\s*(\d+):(\d+)\s+(error|warning)\s+([a-z-]+)\s*$")

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
    return load_workflows([BUILTIN_DIR], ACTORS, settings or Settings())


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- broken files: exact diagnostics ---------------------------------------------------------


@pytest.mark.parametrize("path", BROKEN_FILES, ids=lambda p: p.name)
def test_broken_file_reports_exactly_its_expected_diagnostics(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} has no '# expect:' header"
    workflow, diagnostics = check_file(path, ACTORS, Settings())
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
    reserved = hints["unknown key 'on_failure' in the workflow"]
    assert reserved is not None
    assert "reserved for a later version" in reserved


def test_reserved_stage_keys_say_so() -> None:
    _, diagnostics = check_file(BROKEN / "reserved-key.yaml", ACTORS, Settings())
    by_line = {d.line: d for d in diagnostics}
    assert by_line[12].hint is not None
    assert "'needs' is reserved" in by_line[12].hint
    assert by_line[13].hint == "did you mean 'timeout_s'?"


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
    assert sorted(builtins()) == ["text2music", "text2sound"]


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
    assert sorted(workflows) == ["remix", "text2music", "text2sound"]
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
        "description": "Length of the audio, in seconds.",
        "exclusiveMinimum": 0,
        "maximum": 12,
        "default": 8,
    }


def test_input_struct_is_cached() -> None:
    workflow = builtins()["text2music"]
    assert input_struct(workflow) is input_struct(workflow)
    assert input_struct(workflow) is not input_struct(builtins()["text2sound"])


def test_validate_input_fills_defaults() -> None:
    workflow = builtins()["text2music"]
    body = validate_input(workflow, {"prompt": "lofi beats"})
    assert body == {"prompt": "lofi beats", "duration": 8.0}
    assert isinstance(body["duration"], float)
    assert validate_input(workflow, {"prompt": "x", "duration": 30}) == {
        "prompt": "x",
        "duration": 30.0,
    }
    assert validate_input(builtins()["text2sound"], {"prompt": "rain"})["duration"] == 5.0


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"prompt": ""}, "input.prompt", "must not be empty"),
        ({"prompt": "x" * 101}, "input.prompt", "must be at most 100 characters long"),
        ({"prompt": "x", "duration": 0}, "input.duration", "must be greater than 0"),
        ({"prompt": "x", "duration": 30.5}, "input.duration", "must be at most 30"),
        ({"prompt": "x", "duration": "8"}, "input.duration", "must be a number, not a string"),
        ({"prompt": "x", "duration": True}, "input.duration", "must be a number, not a boolean"),
        ({"duration": 8}, "input.prompt", "is required"),
        ({"prompt": "x", "seed": 1}, "input.seed", "is not allowed"),
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


def test_duration_limits_everywhere_on_a_grid() -> None:
    """Property-style: a duration passes exactly when 0 < duration <= MAX_DURATION."""
    workflow = builtins(Settings(max_duration=20))["text2music"]
    for tenths in range(-20, 260, 7):
        duration = tenths / 10
        accepted = True
        try:
            validate_input(workflow, {"prompt": "x", "duration": duration})
        except InputError:
            accepted = False
        assert accepted == (0 < duration <= 20), duration


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
