"""Generation benchmark: batching on against off through the real service, and the service
against calling audiocraft directly on the same batch, all in one run.

    uv run python bench/generate.py                      # tiny random models, CPU
    uv run python bench/generate.py --requests 16 --duration 5 --batch 8
    uv run python bench/generate.py --model DIR          # any checkpoint folder (GPU if there)

Three phases, same model, same prompts and durations:

1. **direct**: ``model.generate`` on a batch of ``--batch`` prompts, and on one prompt, in this
   process: the ceiling, and what batching buys with no service around it.
2. **service, batching on**: ``aimarket serve`` (embedded mode: in-process queue, SQLite, local
   media) with ``BATCH_MAX_SIZE=--batch`` and as many worker threads; ``--requests`` tasks
   submitted at once over HTTP; throughput is seconds of audio per second of wall time from the
   first submit to the last finish; latency is each task's created -> finished.
3. **service, batching off**: the same with ``BATCH_MAX_SIZE=1``.

It prints a table and, with ``--json``, one JSON object. Everything runs on loopback and stops
by itself; the tiny models (made by ``aimarket models make-tiny``) produce noise, which is fine:
decoding costs the same steps whatever the weights.
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
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def direct(model_dir: Path, kind: str, batch: int, duration: float, rounds: int) -> dict[str, Any]:
    """Audio seconds per second of ``generate`` at batch 1 and at ``batch``."""
    from actors import audio_models

    audio_models.load_model(kind, str(model_dir), "auto")  # type: ignore[arg-type]
    audio_models.generate(kind, str(model_dir), ["warm up"], 1.0)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for size in (1, batch):
        prompts = [f"prompt {i}" for i in range(size)]
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            audio_models.generate(kind, str(model_dir), prompts, duration)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
        best = min(times)
        out[f"batch_{size}"] = {"seconds": best, "audio_s_per_s": size * duration / best}
    return out


def service(
    model_dir: Path, workflow: str, batch: int, requests: int, duration: float, work: Path
) -> dict[str, Any]:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(work)),
        "DATA_DIR": str(work / f"data-{batch}"),
        "MARKETPLACE_TOKEN": TOKEN,
        "MUSIC_GEN_MODEL": str(model_dir),
        "AUDIO_GEN_MODEL": str(model_dir),
        "BATCH_MAX_SIZE": str(batch),
        "BATCH_MAX_WAIT_MS": "50",
        # Enough threads that every request can be waiting for the batcher at once.
        "EMBEDDED_WORKER_THREADS": str(max(batch, 2) + 2),
        "LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    log = (work / f"serve-{batch}.log").open("wb")
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
            # Warm-up: loads the model (and torch) before the clock starts.
            warm = submit(client, workflow, "warm", duration)
            wait(client, [warm])
            t0 = time.perf_counter()
            ids = [submit(client, workflow, f"prompt {i}", duration) for i in range(requests)]
            views = wait(client, ids)
            wall = time.perf_counter() - t0
        latencies = [
            (
                datetime.fromisoformat(v["finished_at"]) - datetime.fromisoformat(v["created_at"])
            ).total_seconds()
            for v in views
        ]
        failed = [v for v in views if v["status"] != "succeeded"]
        return {
            "batch_max_size": batch,
            "requests": requests,
            "failed": len(failed),
            "wall_s": wall,
            "audio_s_per_s": requests * duration / wall,
            "latency_p50_s": percentile(latencies, 0.5),
            "latency_p90_s": percentile(latencies, 0.9),
            "latency_max_s": max(latencies),
            "latency_mean_s": statistics.fmean(latencies),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def submit(client: httpx.Client, workflow: str, prompt: str, duration: float) -> str:
    body = {
        "workflow": workflow,
        "user_id": "bench",
        "input": {"prompt": prompt, "duration": duration},
    }
    response = client.post("/v1/tasks", json=body)
    response.raise_for_status()
    return str(response.json()["task_id"])


def wait(client: httpx.Client, ids: list[str], timeout: float = 1800) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        for task_id in ids:
            if task_id not in done:
                view = client.get(f"/v1/tasks/{task_id}").json()
                if view["status"] in ("succeeded", "failed", "cancelled"):
                    done[task_id] = view
        time.sleep(0.05)
    return [done[i] for i in ids if i in done]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="direct phase repetitions")
    parser.add_argument("--model", type=Path, help="checkpoint folder (default: a tiny one)")
    parser.add_argument("--kind", choices=["musicgen", "audiogen"], default="musicgen")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workflow = "text2music" if args.kind == "musicgen" else "text2sound"
    with tempfile.TemporaryDirectory(prefix="aimarket-bench-gen-") as tmp:
        work = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            from aimarket.tiny_models import make_tiny

            model_dir = make_tiny(work / "model", args.kind)
        report: dict[str, Any] = {
            "machine": machine(),
            "date": datetime.now().isoformat(timespec="seconds"),
            "model": str(args.model or f"tiny random {args.kind}"),
            "duration_s": args.duration,
            "direct": direct(model_dir, args.kind, args.batch, args.duration, args.rounds),
            "service_on": service(
                model_dir, workflow, args.batch, args.requests, args.duration, work
            ),
            "service_off": service(model_dir, workflow, 1, args.requests, args.duration, work),
        }
    on, off, d = report["service_on"], report["service_off"], report["direct"]
    report["ratio_on_off"] = on["audio_s_per_s"] / off["audio_s_per_s"]
    report["service_vs_direct_batched"] = (
        on["audio_s_per_s"] / d[f"batch_{args.batch}"]["audio_s_per_s"]
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['machine']}\nmodel: {report['model']}, {args.duration} s clips")
    print(f"direct generate, batch 1:   {d['batch_1']['audio_s_per_s']:8.1f} s audio/s")
    batched = d[f"batch_{args.batch}"]["audio_s_per_s"]
    print(f"direct generate, batch {args.batch}:   {batched:8.1f} s audio/s")
    for name, row in (("service, batching on ", on), ("service, batching off", off)):
        print(
            f"{name}: {row['audio_s_per_s']:8.1f} s audio/s  "
            f"latency p50 {row['latency_p50_s']:.2f}s p90 {row['latency_p90_s']:.2f}s "
            f"max {row['latency_max_s']:.2f}s  failed {row['failed']}"
        )
    print(f"batching on/off: {report['ratio_on_off']:.2f}x")
    print(
        f"service (batched) / direct batch {args.batch}: {report['service_vs_direct_batched']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
