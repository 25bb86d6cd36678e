#!/usr/bin/env bash
# benchmarks/compare.py at a budget where self-supervision has time: the tiny preset on many synthetic faces for
# many epochs, every arm (random trunk, BYOL alone, random masking, semantic masking, supervised), 3 seeds.
# Writes compare.{json,md}, group_maps.png and gpu_compare.log into $OUT if set (else runs/gpu-compare).
#
#   bash benchmarks/gpu_compare.sh                  # one GPU: 10,000 faces x 15 epochs, batch 256, seeds 0 1 2
#   bash benchmarks/gpu_compare.sh --dry-run        # the same code path on a CPU in a few minutes (tiny budget)
# Options: --faces N, --epochs N, --batch-size N, --seeds "0 1 2", --device D, --workers N, --dry-run.
# Needs only python3 with torch, torchvision and tqdm (matplotlib for the figure).
set -euo pipefail
cd "$(dirname "$0")/.."

faces=10000 epochs=15 batch=256 seeds="0 1 2" device=cuda workers=
while [ $# -gt 0 ]; do
    case "$1" in
        --faces) faces=$2; shift 2 ;;
        --epochs) epochs=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --dry-run) faces=256 epochs=1 batch=32 seeds=0 device=cpu workers=0; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "gpu_compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
py=${PYTHON:-python3}
command -v "$py" >/dev/null || py=python
out=${OUT:-runs/gpu-compare}
mkdir -p "$out"
exec > >(tee "$out/gpu_compare.log") 2>&1
export PYTHONUNBUFFERED=1
workers=${workers:-$("$py" -c "import os; print(min(16, os.cpu_count() or 1))")}
echo "== gpu_compare.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): $faces faces, $epochs epochs, batch $batch, seeds $seeds, device $device, $workers workers"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
# lr follows train.py's rule for the tiny preset at this batch (the recipe chosen on val, benchmarks/README.md)
# shellcheck disable=SC2086
"$py" benchmarks/compare.py --device "$device" --num-synthetic "$faces" --epochs "$epochs" --batch-size "$batch" \
    --seeds $seeds --workers "$workers" --out "$out"
echo "== done in $(( $(date +%s) - start )) s"
