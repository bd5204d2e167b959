"""bench/gpu.sh, the script the first GPU machine runs, in its dry mode on this CPU: tiny
shapes and sizes, the same steps end to end, one table at the end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def test_the_gpu_script_runs_end_to_end_in_dry_mode(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout
    for row in (
        "direct, batch 1",
        "direct, batch 2",
        "service, 2 at once, max 2",
        "batching on / off",
    ):
        assert row in table
    assert "check placement" in table
    assert '"skipped": "no CUDA"' in table  # the CUDA-only checks say so on a CPU
    music = json.loads((tmp_path / "gpu-tiny-musicgen.json").read_text())
    assert all(row["failed"] == 0 for row in music["service"].values())
    assert music["service"]["2"]["mean_batch"] > 1  # batching happened through the service
    assert (tmp_path / "gpu-tiny-audiogen.png").read_bytes()[:4] == b"\x89PNG"
    checks = json.loads((tmp_path / "gpu-checks.json").read_text())
    assert checks["placement"]["ok"]
    assert checks["precision"] == {"ok": True, "dtype": "torch.bfloat16", "finite": True}
