"""What a clip costs after the model: the per-task work of the stages that follow generation,
on clips of real lengths (2 s and MusicGen's longest window, 30 s), in one run.

    uv run python bench/post_stages.py                 # 32 kHz mono, 2 s and 30 s
    uv run python bench/post_stages.py --durations 30 --rate 16000

Timed, best of ``--rounds``, each on the same random clip (noise, the worst case for every
encoder): the WAV hand-off of the generation stage (``encode_wav``), the visualize stage's two
pictures, and the store stage's encoding to each format, with and without loudness
normalisation. Compare each with the decoding time of the same clip (bench/generate.py):
together they are the fixed per-task cost that batching does not divide.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from actors.visualize import _pictures
from audio.audio_models import encode_wav
from audio.encode import encode

FORMATS = ("wav", "flac", "ogg", "opus", "mp3")


def best_ms(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * min(times)


def measure(duration: float, rate: int, rounds: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    samples = (0.3 * rng.standard_normal((1, round(duration * rate)))).astype(np.float32)
    wav = encode_wav(samples, rate)
    row = {
        "handoff_wav": best_ms(lambda: encode_wav(samples, rate), rounds),
        "visualize": best_ms(lambda: _pictures(wav), rounds),
    }
    for fmt in FORMATS:
        row[f"store_{fmt}"] = best_ms(lambda f=fmt: encode(wav, f), rounds)  # type: ignore[misc]
    row["store_wav_loudness"] = best_ms(lambda: encode(wav, "wav", -14.0), rounds)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--durations", default="2,30")
    parser.add_argument("--rate", type=int, default=32000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {d: measure(float(d), args.rate, args.rounds) for d in args.durations.split(",") if d}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    names = list(next(iter(report.values())))
    print(f"ms per clip, {args.rate} Hz mono, best of {args.rounds}")
    print(f"{'step':<20}" + "".join(f"{d + ' s':>10}" for d in report))
    for name in names:
        print(f"{name:<20}" + "".join(f"{report[d][name]:>10.1f}" for d in report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
