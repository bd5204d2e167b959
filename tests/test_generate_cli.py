"""`aimarket generate`: one task run locally, with its real output and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import soundfile as sf

from tests.conftest import BIN


def generate(
    args: list[str], tmp_path: Path, tiny_models: dict[str, Path], **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "MUSIC_GEN_MODEL": str(tiny_models["musicgen"]),
        "AUDIO_GEN_MODEL": str(tiny_models["audiogen"]),
        "DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    return subprocess.run(
        [str(BIN / "aimarket"), "generate", *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_writes_a_wav_with_a_progress_bar(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    out = tmp_path / "out.wav"
    result = generate(
        ["text2music", "lofi hip hop with warm piano", "--duration", "20", "-o", str(out)],
        tmp_path,
        tiny_models,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (20.00 s of audio at 32000 Hz")
    lines = result.stderr.splitlines()
    assert "stage generate" in lines
    bars = [line for line in lines if line.startswith("generate [")]
    assert bars, result.stderr
    assert bars[-1].startswith("generate [" + "#" * 30 + "] 100.0%")
    assert "elapsed" in bars[-1]
    assert " left " in bars[-1]
    info = sf.info(str(out))
    assert info.samplerate == 32000
    assert abs(info.duration - 20) < 0.05
    assert "Traceback" not in result.stderr


def test_json_output_and_generic_inputs(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    result = generate(
        ["text2sound", "--input", "prompt=rain on a tin roof", "--input", "duration=1.5", "--json"],
        tmp_path,
        tiny_models,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["task"]["status"] == "succeeded"
    assert report["task"]["input"]["prompt"] == "rain on a tin roof"
    assert report["task"]["input"]["duration"] == 1.5
    path = tmp_path / report["path"]
    assert path.name.startswith("text2sound-")
    assert abs(sf.info(str(path)).duration - 1.5) < 0.05
    names = {o["name"] for o in report["task"]["outputs"]}
    assert names == {"audio", "waveform", "spectrogram"}


def test_bad_input_is_a_usage_error(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    result = generate(["text2music", "piano", "--duration", "99"], tmp_path, tiny_models)
    assert result.returncode == 2
    assert "input.duration" in result.stderr
    assert "at most 30" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.wav"))


def test_unknown_workflow(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    result = generate(["text2video", "cats"], tmp_path, tiny_models)
    assert result.returncode == 2
    assert "no workflow 'text2video'" in result.stderr
    assert "text2music" in result.stderr  # the known ones are listed


def test_missing_model_fails_with_a_hint(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    result = generate(
        ["text2music", "piano", "-d", "1"],
        tmp_path,
        tiny_models,
        MUSIC_GEN_MODEL=str(tmp_path / "no-such-model"),
    )
    assert result.returncode == 1
    assert "model_unavailable" in result.stderr
    assert "no-such-model" in result.stderr
    assert "aimarket models make-tiny" in result.stderr
    assert "Traceback" not in result.stderr
