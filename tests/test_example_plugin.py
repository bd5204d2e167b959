"""A third party's stage works with no change to aimarket: the example package
``examples/aimarket-fade`` registers ``fade.apply`` through the ``aimarket.stages`` entry
point, and its ``text2music-faded`` workflow validates, graphs and runs end to end.

Nothing is installed: the package is "installed" for a subprocess by putting, on its
PYTHONPATH, the package's source folder and a ``*.dist-info`` folder whose ``entry_points.txt``
is written from the package's own ``pyproject.toml`` (what pip or uv would write), so
``importlib.metadata.entry_points(group="aimarket.stages")`` finds it as it would an installed
wheel.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import tomllib
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import BIN, ROOT, TOKEN, Receiver, embedded_env, serve, stop

EXAMPLE = ROOT / "examples" / "aimarket-fade"
SRC = EXAMPLE / "src"
WORKFLOWS = EXAMPLE / "workflows"
WORKFLOW = "text2music-faded"
#: actors.all.ENTRY_POINT_GROUP (not imported: that would register every actor on whatever
#: broker this test process has).
ENTRY_POINT_GROUP = "aimarket.stages"


def _fake_install(site: Path) -> None:
    """Write ``site/<name>-<version>.dist-info`` from the example's pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{key} = {value}" for key, value in entries.items())
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PYTHONPATH on which the example package looks installed."""
    site = tmp_path_factory.mktemp("site-packages")
    _fake_install(site)
    return os.pathsep.join([str(site), str(SRC), str(ROOT)])


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``aimarket ARGS`` in a clean environment (a developer's settings and .env stay
    out: the working directory is a fresh folder)."""
    keep = ("PATH", "HOME", "LANG", "TMPDIR")
    base = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LC_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [str(BIN / "aimarket"), *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- the entry point ------------------------------------------------------------------------


def test_entry_point_is_found(plugin_path: str, tmp_path: Path) -> None:
    code = (
        "from importlib.metadata import entry_points; "
        f"print(sorted((e.name, e.value) for e in entry_points(group={ENTRY_POINT_GROUP!r})))"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": plugin_path}
    found = subprocess.run(
        [str(BIN / "python"), "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert "('fade', 'aimarket_fade.stage')" in found.stdout


def test_workflow_validates_with_the_plugin(plugin_path: str, tmp_path: Path) -> None:
    done = cli(["workflows", "validate", str(WORKFLOWS)], tmp_path, PYTHONPATH=plugin_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 file(s) checked, 0 error(s), 0 warning(s)" in done.stdout


def test_workflow_is_refused_without_the_plugin(tmp_path: Path) -> None:
    if any(e.value.startswith("aimarket_fade") for e in entry_points(group=ENTRY_POINT_GROUP)):
        pytest.skip("aimarket-fade is installed in this environment")
    done = cli(["workflows", "validate", "--format", "json", str(WORKFLOWS)], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [(d["code"], d["severity"]) for d in report["diagnostics"]] == [
        ("unknown-actor", "error")
    ]
    assert "'fade.apply'" in report["diagnostics"][0]["message"]


def test_graph_shows_the_plugin_stage(plugin_path: str, tmp_path: Path) -> None:
    env = {"PYTHONPATH": plugin_path, "WORKFLOWS_DIRS": str(WORKFLOWS)}
    done = cli(["workflows", "graph", WORKFLOW], tmp_path, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'fade["fade<br/>fade.apply · default"]' in done.stdout
    assert "generate --> fade" in done.stdout
    assert "fade --> visualize" in done.stdout
    outline = cli(["workflows", "graph", WORKFLOW, "--format", "outline"], tmp_path, **env)
    assert outline.returncode == 0, outline.stderr
    assert "fade.apply" in outline.stdout
    assert outline.stdout.rstrip().endswith("runs as a dag")


# --- the signal processing, in process --------------------------------------------------------


@pytest.fixture
def audio(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SRC))
    return importlib.import_module("aimarket_fade.audio")


def _wav(samples: Any, rate: int, subtype: str = "PCM_16") -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype=subtype)
    return out.getvalue()


def test_fade_ramps_in_and_out(audio: ModuleType) -> None:
    rate = 8000
    wav = _wav(np.full((rate, 2), 0.5, dtype=np.float32), rate)  # 1 s of stereo DC
    faded, got_rate, duration = audio.fade_wav(wav, 0.25)
    samples, _ = sf.read(io.BytesIO(faded), dtype="float32", always_2d=True)
    info = sf.info(io.BytesIO(faded))
    assert (got_rate, duration, info.channels, info.subtype) == (rate, 1.0, 2, "PCM_16")
    n = 2000
    ramp = np.linspace(0, 0.5, n)
    assert np.allclose(samples[:n, 0], ramp, atol=1e-4)
    assert np.allclose(samples[-n:, 1], ramp[::-1], atol=1e-4)
    assert np.allclose(samples[n:-n], 0.5, atol=1e-4)
    assert samples[0].tolist() == [0, 0]
    assert samples[-1].tolist() == [0, 0]


def test_fade_edges(audio: ModuleType) -> None:
    rate = 1000
    clip = np.full(rate, 0.25, dtype=np.float32)
    # Longer than half the clip: shortened to half, the two ramps meet in the middle.
    faded, _, _ = audio.fade_wav(_wav(clip, rate, "FLOAT"), 3.0)
    samples, _ = sf.read(io.BytesIO(faded), dtype="float32")
    assert sf.info(io.BytesIO(faded)).subtype == "FLOAT"
    assert samples.max() == pytest.approx(0.25)
    assert samples[0] == samples[-1] == 0
    # No fade: unchanged.
    same, _, _ = audio.fade_wav(_wav(clip, rate, "FLOAT"), 0)
    assert np.array_equal(sf.read(io.BytesIO(same), dtype="float32")[0], clip)
    with pytest.raises(ValueError, match="0 or more"):
        audio.fade_wav(_wav(clip, rate), -1)


# --- end to end, embedded mode ----------------------------------------------------------------


def test_faded_task_runs_end_to_end(
    plugin_path: str,
    tmp_path: Path,
    tiny_models: dict[str, Path],
    extra_workflows: Path,
    receiver: Receiver,
) -> None:
    env = embedded_env(tmp_path / "data", tiny_models, extra_workflows, receiver)
    # Only the plugin's folder and entry point: no ACTOR_MODULES, nothing of aimarket changed.
    env.pop("ACTOR_MODULES", None)
    env.update(PYTHONPATH=plugin_path, WORKFLOWS_DIRS=str(WORKFLOWS))
    api = serve(env, tmp_path)
    try:
        assert f"{WORKFLOW}, text2sound" in api.proc.output()  # "serving 5 workflows: ..."
        auth = {"authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=api.url, headers=auth, timeout=30) as client:
            workflows = {w["name"] for w in client.get("/v1/workflows").json()["workflows"]}
            assert WORKFLOW in workflows
            body = {
                "workflow": WORKFLOW,
                "user_id": f"fade-{uuid.uuid4().hex[:6]}",
                "input": {"prompt": "soft synth pad", "duration": 1, "fade": 0.25},
                "callback_url": receiver.url,
            }
            response = client.post("/v1/tasks", json=body)
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            called = receiver.wait_for(task_id, timeout=180)
            assert called["status"] == "succeeded", api.proc.output()
            task = client.get(f"/v1/tasks/{task_id}").json()
        stages = task["stages"]
        for stage in ("generate", "fade", "visualize", "store", "aggregate"):
            assert stages[stage]["status"] == "succeeded", stage
        [faded] = stages["fade"]["output"]["media"]
        assert faded["blob"].endswith(f"{task_id}:fade:0")
        outputs = {o["name"]: o for o in task["outputs"]}
        assert set(outputs) == {"audio", "waveform", "spectrogram"}
        audio = outputs["audio"]
        assert audio["duration_s"] == pytest.approx(1.0, abs=0.05)
        media = httpx.get(audio["url"], timeout=30)
        assert media.status_code == 200
        samples, rate = sf.read(io.BytesIO(media.content), dtype="float32", always_2d=True)
    finally:
        stop(api.proc)

    assert rate == 32000
    peak = np.abs(samples).max(axis=1)
    fade = int(0.25 * rate)  # frames of each ramp
    middle = peak[len(peak) // 2 - 2000 : len(peak) // 2 + 2000].max()  # outside the ramps
    assert middle > 0, "the generated audio is silent"
    assert peak[0] == peak[-1] == 0
    # The ramp's gain over the first and last 100 frames is at most 100/8000: whatever the
    # model made, those frames are far quieter than the unfaded middle.
    for edge in (peak[:100], peak[-100:]):
        assert edge.max() <= 100 / fade + 1e-4
        assert edge.max() < 0.1 * middle
