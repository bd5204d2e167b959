"""What only a GPU can show about the model layer, checked on the model given (bench/gpu.sh).

* placement: ``DEVICE=auto`` puts the LM and EnCodec on the GPU;
* precision: ``MODEL_PRECISION=bf16`` leaves the transformer in bfloat16 and generates;
* out of memory: with the process held to a little more memory than the model needs, a big
  batch hits a real ``torch.cuda.OutOfMemoryError``; the batcher halves the batch and every
  request still gets its clip;
* eviction: with a cache of one model, loading a second frees the first's memory.

Without CUDA the first two run on the CPU and the others are reported as skipped. Prints one
line a check and writes them as JSON with ``--out``; exits 1 if a check that ran failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from actors.batching import Batcher, Request
from actors.generate import generate_batch
from audio import audio_models

GIB = 1024**3


def placement(model: str, kind: str) -> dict[str, Any]:
    import torch

    audio_models.set_precision("auto")
    loaded = audio_models.load_model(kind, model, "auto")  # type: ignore[arg-type]
    want = "cuda" if torch.cuda.is_available() else "cpu"
    devices = {
        next(loaded.lm.parameters()).device.type,
        next(loaded.compression_model.parameters()).device.type,
    }
    return {"ok": devices == {want}, "devices": sorted(devices)}


def precision(model: str, kind: str) -> dict[str, Any]:
    import torch

    audio_models.set_precision("bf16")
    loaded = audio_models.load_model(kind, model, "auto")  # type: ignore[arg-type]
    dtype = next(loaded.lm.transformer.parameters()).dtype
    audio = audio_models.generate(kind, model, ["a", "b"], 0.5)  # type: ignore[arg-type]
    finite = bool(np.isfinite(audio.samples).all())
    audio_models.set_precision("auto")
    return {"ok": dtype == torch.bfloat16 and finite, "dtype": str(dtype), "finite": finite}


def out_of_memory(
    model: str, kind: str, requests: int = 32, duration: float = 4.0
) -> dict[str, Any]:
    import torch

    loaded = audio_models.load_model(kind, model, "cuda")  # type: ignore[arg-type]
    del loaded
    held = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    # Room for the model and about half a GiB: a batch of `requests` clips cannot fit.
    torch.cuda.set_per_process_memory_fraction(min(1.0, (held + GIB // 2) / total))
    batcher = Batcher(generate_batch, max_batch=requests, max_wait_s=0.5)
    futures = [
        batcher.submit(
            Request(kind=kind, model=model, prompt=f"p{i}", duration=duration, device="cuda")
        )
        for i in range(requests)
    ]
    clips = [f.result(timeout=600) for f in futures]
    torch.cuda.set_per_process_memory_fraction(1.0)
    halved = batcher.limit < requests
    return {
        "ok": all(c.samples.shape[-1] > 0 for c in clips),
        "reached_oom": halved,
        "batches": batcher.batches,
        "limit_after": batcher.limit,
    }


def eviction(model: str, kind: str) -> dict[str, Any]:
    import torch

    audio_models.clear_model_cache()
    torch.cuda.empty_cache()
    audio_models.set_cache_size(1)
    audio_models.set_precision("auto")
    audio_models.load_model(kind, model, "cuda")  # type: ignore[arg-type]
    one = torch.cuda.memory_allocated()
    audio_models.set_precision("bf16")  # another cache entry: the first is evicted
    audio_models.load_model(kind, model, "cuda")  # type: ignore[arg-type]
    after = torch.cuda.memory_allocated()
    audio_models.set_cache_size(2)
    audio_models.set_precision("auto")
    return {"ok": after < 1.5 * one, "one_model_gib": one / GIB, "after_eviction_gib": after / GIB}


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--kind", choices=["musicgen", "audiogen"], default="musicgen")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, kind = str(args.model), args.kind
    checks: dict[str, Any] = {
        "placement": placement(model, kind),
        "precision": precision(model, kind),
    }
    for name, check in (("out_of_memory", out_of_memory), ("eviction", eviction)):
        checks[name] = check(model, kind) if torch.cuda.is_available() else {"skipped": "no CUDA"}
    for name, result in checks.items():
        print(f"{name}: {json.dumps(result)}")
    if args.out:
        args.out.write_text(json.dumps(checks, indent=2) + "\n")
    return 1 if any(r.get("ok") is False for r in checks.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
