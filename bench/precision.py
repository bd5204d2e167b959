"""The faster decoding path: bfloat16 (MODEL_PRECISION=bf16) against stock float32, same run.

    uv run aimarket models make-random /tmp/ms --like musicgen-small
    uv run python bench/precision.py --model /tmp/ms              # CPU: fp32 against bf16
    uv run python bench/precision.py --model /tmp/ms --batches 1,8 --duration 2

For each precision (``--precisions``, default ``fp32,bf16`` on CPU and ``auto,bf16`` on CUDA,
where ``auto`` is audiocraft's float16) it loads the checkpoint through the service's model
layer and times ``generate`` at each batch size, best of ``--rounds``; then it measures how
far the faster precision's next-token distributions are from the first one's on the same
codes and prompts (``audio.precision.closeness``). It prints one table and the throughput
ratios against the first precision; ``--json`` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from audio import audio_models
from audio.precision import closeness
from bench.generate import direct, machine, model_name, sizes


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--kind", choices=["musicgen", "audiogen"], default="musicgen")
    parser.add_argument("--precisions", help="comma-separated; the first is the baseline")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--frames", type=int, default=100, help="frames of the closeness check")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args()
    default = "auto,bf16" if torch.cuda.is_available() else "fp32,bf16"
    precisions = (args.precisions or default).split(",")
    model = str(args.model)
    report: dict[str, Any] = {
        "machine": machine(),
        "date": datetime.now().isoformat(timespec="seconds"),
        "model_name": model_name(args.model, args.kind),
        "duration_s": args.duration,
        "throughput": {},
    }
    for precision in precisions:
        report["throughput"][precision] = direct(
            args.model, args.kind, sizes(args.batches), args.duration, args.rounds, precision
        )
    loaded = {}  # both copies at once, for the closeness check
    for precision in precisions:
        audio_models.set_precision(precision)
        loaded[precision] = audio_models.load_model(args.kind, model)  # type: ignore[arg-type]
    base, *others = precisions
    report["baseline"] = base
    report["closeness"] = {
        p: asdict(closeness(loaded[base], loaded[p], ["calm piano", "loud drums"], args.frames))
        for p in others
    }
    report["speedup"] = {
        p: {
            size: row["audio_s_per_s"] / report["throughput"][base][size]["audio_s_per_s"]
            for size, row in report["throughput"][p].items()
        }
        for p in others
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text if args.json else table(report, base))
    return 0


def table(report: dict[str, Any], base: str) -> str:
    lines = [
        f"machine: {report['machine']}",
        f"model: {report['model_name']}, {report['duration_s']:g} s clips",
    ]
    for precision, rows in report["throughput"].items():
        for size, row in rows.items():
            speedup = report["speedup"].get(precision, {}).get(size)
            ratio = f"  {speedup:.2f}x {base}" if speedup else ""
            lines.append(
                f"{precision:>5}, batch {size:>3}: {row['audio_s_per_s']:8.3f} s audio/s "
                f"({row['seconds']:.2f} s a call){ratio}"
            )
    for precision, near in report["closeness"].items():
        lines.append(
            f"{precision} against {base}: next-token distributions TV mean {near['mean_tv']:.4f} "
            f"max {near['max_tv']:.4f}, same likeliest token {near['top1_agreement']:.1%}, "
            f"max logit difference {near['max_abs_logit_diff']:.3f} (logit std "
            f"{near['logit_std']:.3f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
