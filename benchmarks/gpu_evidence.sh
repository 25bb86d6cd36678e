#!/usr/bin/env bash
# The learning curves of benchmarks/learning_curve.py at a GPU budget: FER2013 (all 28,709 training faces) and the
# synthetic faces (with the landmark hit rate and its two controls), every arm, probed on val along the way.
# FER2013 travels as one file, data/fer2013.npz (54 MB; `python benchmarks/prepare_fer2013.py --from <folders>
# --out data/fer2013 --npz data/fer2013.npz` makes it); this script turns it back into data/fer2013/fer2013.csv.
# Writes fer2013_curve_gpu.{jsonl,md,png}, synthetic_curve_gpu.{jsonl,md,png} and gpu_evidence.log into $OUT if set
# (else runs/gpu-evidence). Rerun the same command to continue an interrupted run (points already measured are kept).
#
#   bash benchmarks/gpu_evidence.sh               # one GPU: tiny preset, batch 256, 100 epochs of FER2013, 1 seed
#   bash benchmarks/gpu_evidence.sh --dry-run     # the same code path on a CPU in a few minutes (2 steps an epoch)
# Options: --epochs N (FER2013), --synthetic-epochs N, --batch-size N, --seeds "0 1", --arms a,b,..,
#          --device D, --workers N, --dry-run.
set -euo pipefail
cd "$(dirname "$0")/.."

epochs=100 synthetic_epochs=100 batch=256 seeds=0 device=cuda workers= dry=
# most telling first, so that a run cut short by its time limit has answered the main questions
arms=simclr+semantic,simclr,byol+semantic,byol,simclr+random,byol+random,supervised
while [ $# -gt 0 ]; do
    case "$1" in
        --epochs) epochs=$2; shift 2 ;;
        --synthetic-epochs) synthetic_epochs=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        --seeds) seeds=$2; shift 2 ;;
        --arms) arms=$2; shift 2 ;;
        --device) device=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --dry-run) dry=1 epochs=2 synthetic_epochs=2 batch=16 device=cpu workers=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "gpu_evidence.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
py=${PYTHON:-python3}
command -v "$py" >/dev/null || py=python
out=${OUT:-runs/gpu-evidence}
mkdir -p "$out"
exec > >(tee -a "$out/gpu_evidence.log") 2>&1
export PYTHONUNBUFFERED=1
workers=${workers:-$("$py" -c "import os; print(min(16, os.cpu_count() or 1))")}
echo "== gpu_evidence.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): FER2013 $epochs epochs, synthetic $synthetic_epochs epochs," \
     "batch $batch, seeds $seeds, arms $arms, device $device, $workers workers${dry:+ (dry run)}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ ! -f data/fer2013/fer2013.csv ]; then
    if [ ! -f data/fer2013.npz ]; then
        echo "gpu_evidence.sh: neither data/fer2013/fer2013.csv nor data/fer2013.npz; make one with" \
             "python benchmarks/prepare_fer2013.py --from <FER2013 folders> --out data/fer2013 --npz data/fer2013.npz" >&2
        exit 2
    fi
    "$py" benchmarks/prepare_fer2013.py --from data/fer2013.npz --out data/fer2013
fi
start=$(date +%s)
common=(--batch-size "$batch" --device "$device" --workers "$workers" --seeds $seeds --arms "$arms" --baselines)
# a dry run: 2 steps an epoch, probes on 512 training and 128 val faces
[ -n "$dry" ] && common+=(--max-steps 2 --probe-cap 512)
"$py" benchmarks/learning_curve.py --data fer2013 "${common[@]}" --epochs "$epochs" \
    --runs "$out/runs" --out "$out/fer2013_curve_gpu.jsonl"
echo "== FER2013 done at $(( $(date +%s) - start )) s"
"$py" benchmarks/learning_curve.py --data synthetic "${common[@]}" --epochs "$synthetic_epochs" \
    --runs "$out/runs" --out "$out/synthetic_curve_gpu.jsonl"
echo "== done in $(( $(date +%s) - start )) s"
