"""One table of what bench/gpu.sh measured: ``python bench/gpu_table.py OUT SHAPE...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main() -> int:
    out, shapes = Path(sys.argv[1]), sys.argv[2:]
    reports = {s: json.loads((out / f"gpu-{s}.json").read_text()) for s in shapes}
    first = next(iter(reports.values()))
    print(f"machine: {first['machine']}; {first['duration_s']:g} s clips, seconds of audio per s")
    print(f"{'shape':<18} {'how':<26} {'audio s/s':>10} {'RTF':>6} {'p50 s':>7} {'p90 s':>7}")
    for shape, r in reports.items():
        for size, row in r["direct"].items():
            print(f"{shape:<18} {'direct, batch ' + size:<26} {row['audio_s_per_s']:>10.2f}")
        for size, row in r["service"].items():
            how = f"service, {r['requests']} at once, max {size}"
            print(
                f"{shape:<18} {how:<26} {row['audio_s_per_s']:>10.2f} {row['rtf']:>6.3f} "
                f"{row['latency_p50_s']:>7.2f} {row['latency_p90_s']:>7.2f}"
            )
        for key, label in (
            ("ratio_on_off", "batching on / off"),
            ("service_vs_direct_batched", "service / direct"),
        ):
            if key in r:
                print(f"{shape:<18} {label:<26} {r[key]:>10.2f}")
    precision = _read(out / "gpu-precision.json")
    for name, speedups in precision.get("speedup", {}).items():
        near = precision["closeness"][name]
        for size, ratio in speedups.items():
            how = f"{name} / {precision['baseline']}, batch {size}"
            print(f"{shapes[0]:<18} {how:<26} {ratio:>10.2f}")
        print(f"{shapes[0]:<18} {name + ' mean TV':<26} {near['mean_tv']:>10.4f}")
    for name, check in _read(out / "gpu-checks.json").items():
        print(f"check {name}: {json.dumps(check)}")
    return 0


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())
