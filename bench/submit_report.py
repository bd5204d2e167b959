"""The submit benchmark's report: the machine it ran on and the text table printed without
``--json``. Part of ``bench/submit.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.stack import ROOT, pg_value, rabbitmqctl

# --- Machine description ------------------------------------------------------------------


def machine() -> dict[str, str]:
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        info["postgres"] = pg_value("SHOW server_version") or "?"
    with contextlib.suppress(Exception):
        info["rabbitmq"] = rabbitmqctl("version")
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    return info


# --- Report -------------------------------------------------------------------------------


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    api = report["api_process"]
    w = max(len(p["name"]) for p in report["phases"]) + 2  # width of the name column
    lines = [
        f"aimarket submit benchmark, {m['date']}, commit {m.get('commit', '?')}",
        f"machine: {m['nproc']} x {m['cpu']}, Python {m['python']}, "
        f"PostgreSQL {m.get('postgres', '?')}, RabbitMQ {m.get('rabbitmq', '?')}",
        f"{report['requests']} operations per phase after {report['warmup']} warm-up, "
        f"concurrency {report['concurrency']}",
        "",
        f"{'phase':<{w}}{'ops/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}",
    ]
    for p in report["phases"]:
        lines.append(
            f"{p['name']:<{w}}{p['rate_per_s']:>9.0f}{p['p50_ms']:>9.1f}{p['p90_ms']:>9.1f}"
            f"{p['p99_ms']:>9.1f}{p['max_ms']:>9.1f}{sum(p['errors'].values()):>8}"
        )
    lines.append("")
    for name, ratio in report["ratios"].items():
        verdict = "meets" if ratio >= 0.5 else "BELOW"
        lines.append(f"ratio {name}: {ratio:.2f} ({verdict} the 0.5 bar)")
    for name, ratio in report["cpu_ratios"].items():
        lines.append(f"CPU per task, {name} (server side, no HTTP client): {ratio:.2f}")
    lines += ["", "CPU ms per accepted task (machine busy share during the phase):"]
    for p in report["phases"]:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in p["cpu_ms_per_op"].items())
        lines.append(f"  {p['name']:<{w}}{parts} ({p['machine_busy']:.0%} busy)")
        loops = ", ".join(f"{k} {v:.0%}" for k, v in p["main_thread_busy"].items())
        lines.append(f"  {'':<{w}}main thread (event loop) busy: {loops}")
        if p["postgres_started"] or p["postgres_ended"]:
            lines.append(
                f"  {'':<{w}}Postgres connections: {p['postgres_started']} new, "
                f"{p['postgres_ended']} closed"
            )
        if p["other_top_ms_per_op"]:
            top = ", ".join(f"{k} {v:.2f}" for k, v in p["other_top_ms_per_op"].items())
            lines.append(f"  {'':<{w}}busiest in other: {top}")
    lines += ["", "median ms of each part of a bare-loop task:"]
    for p in report["phases"]:
        if p["parts_p50_ms"]:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in p["parts_p50_ms"].items())
            lines.append(f"  {p['name']:<{w}}{parts}")
    lines += ["", f"background CPU load before the run: {report['background_busy']:.0%}"]
    for p in report["phases"]:
        if p["errors"]:
            lines += ["", f"errors in {p['name']}: {p['errors']}, first ones:"]
            lines += [f"  {sample}" for sample in p["error_samples"]]
    api_log = report["api_log"]
    lines += [
        "",
        f"API log (LOG_LEVEL=WARNING): {api_log['lines']} lines, {api_log['info']} at INFO, "
        f"{len(api_log['problems'])} warnings or errors",
        *[f"  {line}" for line in api_log["problems"][:10]],
    ]
    lines += [
        "",
        f"API start-up: {api['start_live_s']:.2f}s spawn -> first 200 on /health/live, "
        f"{api['start_ready_s']:.2f}s -> /health/ready",
        f"API after the run: RSS {api['rss_mib']:.0f} MiB (peak {api['peak_rss_mib']:.0f}), "
        f"{api['threads']} threads, libtorch mapped: {'YES' if api['torch_mapped'] else 'no'}",
    ]
    return "\n".join(lines)
