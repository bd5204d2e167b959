"""Generation benchmark: batching on against off through the real service, and the service
against calling audiocraft directly, all in one run.

    uv run python bench/generate.py                      # tiny random models, CPU
    uv run aimarket models make-random /tmp/ms --like musicgen-small
    uv run python bench/generate.py --model /tmp/ms --requests 8 --batch 8 --duration 2
    uv run python bench/generate.py --model /tmp/ms --batches 1,2,4,8 --plot docs/batching.png

Phases, same model, same prompts and durations:

1. **direct**: ``generate`` on a batch of each size in ``--batches`` (default ``1,BATCH``) in
   this process, through the service's own model layer (``audio.audio_models``): the ceiling,
   and what batching buys with no service around it.
2. **service**, for each size in ``--service-batches`` (default ``1,BATCH``): ``aimarket
   serve`` (embedded mode: in-process queue, SQLite, local media) with ``BATCH_MAX_SIZE`` at
   that size; ``--requests`` tasks submitted at once over HTTP. Throughput is seconds of audio
   per second of wall time from the first submit to the last finish (the service's own
   ``finished_at``); latency is each task's ``created_at`` -> ``finished_at``, split into
   queued (until a worker starts it) and running (until it ends), p50 and p90; where the
   running time goes is read from the service's own ``/metrics``: the mean seconds of each
   stage (``aimarket_stage_duration_seconds``) and the batch sizes the batcher formed.

It prints a table and the two ratios the issue sets (batching on / off, and service / direct
at ``--batch``); ``--json`` prints one JSON object instead, ``--plot`` writes throughput
against batch size as a PNG. The client polls one list request every 0.2 s, so that its own
load stays out of the figures. Random-weight models (``aimarket models make-random``) produce
noise, which is fine: a decoding step costs the same whatever the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "bench-token"
#: Seconds between the client's polls: often enough to see the end, rare enough to cost nothing.
POLL_S = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def direct(
    model_dir: Path,
    kind: str,
    batches: list[int],
    duration: float,
    rounds: int,
    precision: str,
) -> dict[str, Any]:
    """Audio seconds per second of ``generate`` at each batch size (best of ``rounds``)."""
    from audio import audio_models

    audio_models.set_precision(precision)
    audio_models.generate(kind, str(model_dir), ["warm up"], 1.0)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for size in batches:
        prompts = [f"prompt {i}" for i in range(size)]
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            audio_models.generate(kind, str(model_dir), prompts, duration)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
        best = min(times)
        out[str(size)] = {"seconds": best, "audio_s_per_s": size * duration / best}
    audio_models.clear_model_cache()  # the service phases load their own copy
    return out


def service(
    model_dir: Path,
    kind: str,
    batch: int,
    requests: int,
    duration: float,
    precision: str,
    work: Path,
    extra_env: dict[str, str],
    label: str = "",
) -> dict[str, Any]:
    workflow = "text2music" if kind == "musicgen" else "text2sound"
    port = free_port()
    name = f"{batch}{label}"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(work)),
        "DATA_DIR": str(work / f"data-{name}"),
        "MARKETPLACE_TOKEN": TOKEN,
        "MUSIC_GEN_MODEL": str(model_dir),
        "AUDIO_GEN_MODEL": str(model_dir),
        "BATCH_MAX_SIZE": str(batch),
        "MODEL_PRECISION": precision,
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        **extra_env,
    }
    log = (work / f"serve-{name}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "aimarket"), "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            # Warm-up: loads the model (and torch) before the clock starts, and gives the
            # batcher its first decoding time.
            wait(client, "warm", [submit(client, workflow, "warm", "warm up", duration)])
            started = datetime.now(UTC)
            user = "bench"
            ids = [submit(client, workflow, user, f"prompt {i}", duration) for i in range(requests)]
            views = wait(client, user, ids)
            metrics = client.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    report = summarize(views, started, requests, duration, batch)
    report.update(stage_means(metrics))
    return report


def stage_means(metrics: str) -> dict[str, Any]:
    """Mean seconds per stage run, and the batch sizes formed, from Prometheus text (the
    warm-up task included: one of ``requests + 1``)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    batches: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith("aimarket_stage_duration_seconds_") and 'outcome="ok"' in line:
            name, value = line.rsplit(" ", 1)
            actor = name.split('actor="', 1)[1].split('"', 1)[0]
            if name.startswith("aimarket_stage_duration_seconds_sum"):
                sums[actor] = float(value)
            elif name.startswith("aimarket_stage_duration_seconds_count"):
                counts[actor] = float(value)
        elif line.startswith(
            ("aimarket_generation_batch_size_sum", "aimarket_generation_batch_size_count")
        ):
            name, value = line.rsplit(" ", 1)
            batches[name.split("{", 1)[0].rsplit("_", 1)[1]] = float(value)
    return {
        "stage_mean_s": {a: sums[a] / counts[a] for a in sums if counts.get(a)},
        "mean_batch": batches["sum"] / batches["count"] if batches.get("count") else None,
    }


def summarize(
    views: list[dict[str, Any]], started: datetime, requests: int, duration: float, batch: int
) -> dict[str, Any]:
    def at(value: str) -> datetime:
        return datetime.fromisoformat(value)

    done = [v for v in views if v["status"] == "succeeded"]
    wall = max((at(v["finished_at"]) - started).total_seconds() for v in views)
    latencies = [(at(v["finished_at"]) - at(v["created_at"])).total_seconds() for v in views]
    phases: dict[str, list[float]] = {"queued": [], "running": []}
    for v in done:
        created, first = at(v["created_at"]), at(v["started_at"])
        phases["queued"].append((first - created).total_seconds())
        phases["running"].append((at(v["finished_at"]) - first).total_seconds())
    return {
        "batch_max_size": batch,
        "requests": requests,
        "failed": requests - len(done),
        "wall_s": wall,
        "audio_s_per_s": len(done) * duration / wall,
        # Real-time factor: wall seconds per second of audio (below 1 is faster than real time).
        "rtf": wall / (max(1, len(done)) * duration),
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p90_s": percentile(latencies, 0.9),
        "latency_mean_s": statistics.fmean(latencies),
        "phases": {
            name: {"p50_s": percentile(xs, 0.5), "p90_s": percentile(xs, 0.9)}
            for name, xs in phases.items()
            if xs
        },
    }


def submit(client: httpx.Client, workflow: str, user: str, prompt: str, duration: float) -> str:
    body = {
        "workflow": workflow,
        "user_id": user,
        "input": {"prompt": prompt, "duration": duration},
    }
    response = client.post("/v1/tasks", json=body)
    response.raise_for_status()
    return str(response.json()["task_id"])


def wait(
    client: httpx.Client, user: str, ids: list[str], timeout: float = 3600
) -> list[dict[str, Any]]:
    """The tasks' final views, read with one list request per poll."""
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        time.sleep(POLL_S)
        listed = client.get("/v1/tasks", params={"user_id": user, "limit": 100}).json()
        for view in listed["tasks"]:
            if view["task_id"] in wanted and view["status"] in ("succeeded", "failed", "cancelled"):
                done[view["task_id"]] = view
    # The list leaves the live stage timings out: read each finished task once.
    return [client.get(f"/v1/tasks/{i}").json() for i in ids if i in done]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        gpu = "?"
    return f"{os.cpu_count()} CPUs ({cpu}), {gpu}, Python {platform.python_version()}"


def sizes(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, rows in (("direct generate", report["direct"]), ("service", report["service"])):
        xs = sorted(int(k) for k in rows)
        ax.plot(xs, [rows[str(x)]["audio_s_per_s"] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted({int(k) for rows in (report["direct"], report["service"]) for k in rows})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("batch size (direct) / BATCH_MAX_SIZE (service)")
    ax.set_ylabel("seconds of audio per second")
    ax.set_title(f"{report['model_name']}, {report['duration_s']:g} s clips", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.text(0.01, 0.01, report["machine"][:90], fontsize=6, alpha=0.7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=8, help="concurrent service requests")
    parser.add_argument("--batch", type=int, default=4, help="batch size of the two ratios")
    parser.add_argument("--batches", help="direct batch sizes (default 1,BATCH)")
    parser.add_argument("--service-batches", help="service BATCH_MAX_SIZE values (default 1,BATCH)")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1, help="direct repetitions (best kept)")
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a tiny one)")
    parser.add_argument("--kind", choices=["musicgen", "audiogen"], default="musicgen")
    parser.add_argument("--precision", default="auto", help="MODEL_PRECISION for every phase")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--plot", type=Path, help="write throughput against batch size (PNG)")
    parser.add_argument(
        "--env", action="append", default=[], help="extra service setting, NAME=VALUE"
    )
    parser.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        help="NAME=VALUE: also run the service at --batch with these settings, in the same "
        "run, and report it against the service as configured",
    )
    args = parser.parse_args()
    direct_sizes = sizes(args.batches or f"1,{args.batch}")
    service_sizes = sizes(args.service_batches or f"1,{args.batch}")
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="aimarket-bench-gen-") as tmp:
        work = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from audio.random_models import make_tiny

            model_dir = make_tiny(work / "model", args.kind)
        report: dict[str, Any] = {
            "machine": machine(),
            "date": datetime.now().isoformat(timespec="seconds"),
            "model": str(args.model or f"tiny random {args.kind}"),
            "model_name": model_name(args.model, args.kind),
            "precision": args.precision,
            "duration_s": args.duration,
            "requests": args.requests,
            "direct": direct(
                model_dir, args.kind, direct_sizes, args.duration, args.rounds, args.precision
            ),
            "service": {
                str(size): service(
                    model_dir,
                    args.kind,
                    size,
                    args.requests,
                    args.duration,
                    args.precision,
                    work,
                    extra,
                )
                for size in service_sizes
            },
        }
        if args.baseline_env:
            baseline = dict(item.split("=", 1) for item in args.baseline_env)
            report["baseline"] = {
                "env": baseline,
                **service(
                    model_dir,
                    args.kind,
                    args.batch,
                    args.requests,
                    args.duration,
                    args.precision,
                    work,
                    {**extra, **baseline},
                    label="-baseline",
                ),
            }
    ratios(report, args.batch)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(report, args.plot)
    print(text if args.json else table(report, args.batch))
    return 0


def model_name(model: Path | None, kind: str) -> str:
    if model is None:
        return f"tiny random {kind}"
    readme = model / "README.txt"
    if readme.is_file():
        first = readme.read_text().split(" checkpoint", 1)[0]
        return first.replace("RANDOM ", "random ").strip()
    return model.name


def ratios(report: dict[str, Any], batch: int) -> None:
    svc, d = report["service"], report["direct"]
    if "1" in svc and str(batch) in svc:
        report["ratio_on_off"] = svc[str(batch)]["audio_s_per_s"] / svc["1"]["audio_s_per_s"]
    if str(batch) in svc and str(batch) in d:
        report["service_vs_direct_batched"] = (
            svc[str(batch)]["audio_s_per_s"] / d[str(batch)]["audio_s_per_s"]
        )
    if "baseline" in report and str(batch) in svc:
        report["service_vs_baseline"] = (
            svc[str(batch)]["audio_s_per_s"] / report["baseline"]["audio_s_per_s"]
        )
    if "1" in d and str(batch) in d:
        report["direct_batched_vs_1"] = d[str(batch)]["audio_s_per_s"] / d["1"]["audio_s_per_s"]


def table(report: dict[str, Any], batch: int) -> str:
    lines = [
        f"machine: {report['machine']}",
        f"model: {report['model_name']} ({report['model']}), precision {report['precision']}, "
        f"{report['duration_s']:g} s clips, {report['requests']} concurrent requests",
    ]
    for size, row in report["direct"].items():
        lines.append(
            f"direct generate, batch {size:>3}:  {row['audio_s_per_s']:8.3f} s audio/s  "
            f"({row['seconds']:.2f} s a call)"
        )
    for size, row in report["service"].items():
        phases = "  ".join(
            f"{name} {p['p50_s']:.2f}/{p['p90_s']:.2f}" for name, p in row["phases"].items()
        )
        lines.append(
            f"service, BATCH_MAX_SIZE {size:>3}: {row['audio_s_per_s']:8.3f} s audio/s  "
            f"RTF {row['rtf']:.2f}  latency p50 {row['latency_p50_s']:.2f} s "
            f"p90 {row['latency_p90_s']:.2f} s  failed {row['failed']}"
        )
        stages = "  ".join(
            f"{actor.removeprefix('aimarket.')} {mean:.2f}"
            for actor, mean in sorted(row["stage_mean_s"].items(), key=lambda x: -x[1])
        )
        lines.append(f"    phases p50/p90 s: {phases}")
        lines.append(
            f"    mean s per stage run: {stages}  (mean batch {row['mean_batch'] or 0:.1f})"
        )
    if "baseline" in report:
        row = report["baseline"]
        lines.append(
            f"service, BATCH_MAX_SIZE {batch:>3}, {row['env']}: {row['audio_s_per_s']:8.3f} "
            f"s audio/s  latency p50 {row['latency_p50_s']:.2f} s p90 {row['latency_p90_s']:.2f} s"
            f"  (mean batch {row['mean_batch'] or 0:.1f})"
        )
    for key, label in (
        ("service_vs_baseline", f"service / service with {report.get('baseline', {}).get('env')}"),
        ("ratio_on_off", f"batching on ({batch}) / off (1), service"),
        ("service_vs_direct_batched", f"service / direct generate, batch {batch}"),
        ("direct_batched_vs_1", f"direct generate, batch {batch} / batch 1"),
    ):
        if key in report:
            lines.append(f"{label}: {report[key]:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
