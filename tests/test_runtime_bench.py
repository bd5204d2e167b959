"""bench/runtime.py --quick runs both sides against the machine's services and reports them
and their ratios (the figures themselves are not checked: CI machines are shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PG, RABBIT, REDIS, ROOT, need


def test_runtime_bench_quick_reports_both_sides_and_ratios(tmp_path: Path) -> None:
    for name, addr in (("Postgres", PG), ("Redis", REDIS), ("RabbitMQ", RABBIT)):
        need(name, addr)
    out = tmp_path / "runtime.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "runtime.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert any(line.strip().startswith("hand-written") for line in lines), done.stdout
    assert any(line.strip().startswith("aimarket") for line in lines), done.stdout
    assert "throughput aimarket/hand-written" in done.stdout
    assert "p50 aimarket/hand-written" in done.stdout
    report = json.loads(out.read_text())
    hand, aimarket = report["sides"]
    for side in (hand, aimarket):
        for phase, runs in (("sequential", 15), ("concurrent", 60)):
            assert side[phase]["runs"] == runs
            assert side[phase]["errors"] == 0
        assert side["concurrent"]["per_s"] > 0
    assert report["ratios"]["throughput_aimarket_over_handwritten"] > 0
    assert report["ratios"]["p50_aimarket_over_handwritten"] > 0
    assert aimarket["notes"]["last_20_statuses"] == {"succeeded": 20}
