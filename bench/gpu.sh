#!/usr/bin/env bash
# The real-size generation benchmark, end to end, on the first GPU machine: under 10 minutes
# on one H200-class GPU. It writes the musicgen-small and audiogen-medium shapes (random
# weights, offline), times direct `generate` at batch 1/4/8/16/32, the service with batching
# on (16) and off (1) at 16 concurrent requests, bfloat16 against audiocraft's float16, runs
# the CUDA checks (device placement, precision, a real out-of-memory halving the batch, memory
# freed on eviction), and prints one table. JSON and PNG land in $OUT (default bench/out).
#
#   bash bench/gpu.sh              # on the GPU machine
#   bash bench/gpu.sh --dry-run    # anywhere: tiny shapes and sizes, CPU is fine (the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run=(uv run --frozen)

if [[ "${1:-}" == "--dry-run" ]]; then
  shapes=(tiny-musicgen:musicgen tiny-audiogen:audiogen)
  batches=1,2 service=1,2 requests=2 duration=0.5 on=2
else
  shapes=(musicgen-small:musicgen audiogen-medium:audiogen)
  batches=1,4,8,16,32 service=1,16 requests=16 duration=2 on=16
fi

for pair in "${shapes[@]}"; do
  like="${pair%%:*}" kind="${pair##*:}"
  "${run[@]}" aimarket models make-random "$work/$like" --like "$like" >/dev/null
  "${run[@]}" python bench/generate.py --model "$work/$like" --kind "$kind" \
    --batch "$on" --batches "$batches" --service-batches "$service" --requests "$requests" \
    --duration "$duration" --out "$out/gpu-$like.json" --plot "$out/gpu-$like.png" >/dev/null
done
first="${shapes[0]%%:*}"
"${run[@]}" python bench/precision.py --model "$work/$first" --batches "1,$on" \
  --duration "$duration" --out "$out/gpu-precision.json" >/dev/null
checks=0
"${run[@]}" python bench/gpu_checks.py --model "$work/$first" --out "$out/gpu-checks.json" \
  >/dev/null || checks=$?
"${run[@]}" python bench/gpu_table.py "$out" "${shapes[@]%%:*}"
exit "$checks"  # a CUDA check that ran and failed fails the script, after the table
