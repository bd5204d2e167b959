"""Screening benchmark: what the input screening (api/screening.py) costs per request.

Every JSON body is decoded once more and walked for its depth and text before the route's own
decoding. This measures that work alone, in this process, on bodies of three sizes: a typical
task body, one with a 100-character prompt and every generation setting, and one at the 1 MB
body limit (a 990 KB prompt, the worst a client may send); and, for a baseline in the same
run, msgspec's own decoding of the same body into the route's ``CreateTask`` (which the route
does anyway).

Run: ``uv run python bench/screening.py`` (``--json`` for one JSON object). Figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import timeit

import msgspec

from api.schemas import CreateTask
from api.screening import _check_body

BODIES = {
    "typical": {"workflow": "text2music", "user_id": "u1", "input": {"prompt": "lofi piano"}},
    "full": {
        "workflow": "text2music",
        "user_id": "user-" + "x" * 30,
        "input": {
            "prompt": "p" * 100,
            "duration": 8,
            "format": "mp3",
            "loudness_lufs": -14,
            "seed": 42,
            "top_k": 250,
            "top_p": 0.0,
            "temperature": 1.0,
            "cfg_coef": 3.0,
        },
        "callback_url": "https://market.example/hooks/aimarket?token=abc",
        "events": ["started", "progress"],
    },
    "1 MB": {"workflow": "text2music", "user_id": "u1", "input": {"prompt": "p" * 990_000}},
}


def per_call_us(fn: object, number: int) -> float:
    """The best of five runs of ``number`` calls, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, value in BODIES.items():
        raw = msgspec.json.encode(value)
        number = 50 if len(raw) > 100_000 else 20_000
        screening = per_call_us(lambda raw=raw: _check_body(raw), number)
        decoding = per_call_us(lambda raw=raw: msgspec.json.decode(raw, type=CreateTask), number)
        rows.append(
            {
                "body": name,
                "bytes": len(raw),
                "screening_us": round(screening, 2),
                "route_decoding_us": round(decoding, 2),
                "ratio": round(screening / decoding, 2),
            }
        )
    if args.json:
        print(json.dumps({"python": platform.python_version(), "rows": rows}))
        return
    print(f"{'body':<8} {'bytes':>8} {'screening µs':>13} {'route decode µs':>16} {'ratio':>6}")
    for row in rows:
        print(
            f"{row['body']:<8} {row['bytes']:>8} {row['screening_us']:>13} "
            f"{row['route_decoding_us']:>16} {row['ratio']:>6}"
        )


if __name__ == "__main__":
    main()
