#!/usr/bin/env bash
# The GPU suite, in one go (under 8 minutes on one H100/H200-class GPU):
#   1. the input side: DataLoader throughput with every CPU core as a worker on synthetic faces (fresh workers
#      each epoch vs persistent_workers, + pin_memory), and the blur + normalisation per image on the CPU vs
#      batched on the GPU;
#   2. the training step at the paper preset, batch 256: fp32 vs bf16, eager vs torch.compile, and the other fast
#      paths on top of bf16; images/s, peak GPU memory (max_memory_allocated), FLOPs per image (counted with
#      torch.utils.flop_counter on one step) and the fraction of the GPU's dense peak (bench_step.py's table).
# Every configuration runs in a fresh process; later ones are skipped when the time budget runs short, compiled
# ones first. Prints everything; writes step.{json,md}, input.{json,md}, summary.md and gpu.log into $OUT if set.
#
#   bash benchmarks/gpu.sh                                          # on the GPU machine
#   bash benchmarks/gpu.sh --device cpu --preset tiny --batch-size 8   # the same code path on a CPU, ~1.5 min
# Options: --device D, --preset tiny|paper, --batch-size N, --budget SECONDS (default 450), --steps N, --warmup N.
# Needs only python3 with torch, torchvision and tqdm.
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda preset=paper batch=256 budget=450 steps=10 warmup=3
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --preset) preset=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
py=${PYTHON:-python3}
command -v "$py" >/dev/null || py=python
start=$(date +%s)
out=${OUT:-}
if [ -n "$out" ]; then
    mkdir -p "$out"
    exec > >(tee "$out/gpu.log") 2>&1
fi
export PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - start )); }

echo "== gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): device $device, preset $preset, batch $batch, budget ${budget}s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, torchvision, tqdm; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'tqdm', tqdm.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" \
    || { echo "gpu.sh: python3 with torch, torchvision and tqdm is needed" >&2; exit 2; }

# 1. the input side: bounded on its own, so the step table keeps most of the budget
echo; echo "== 1. input side ($(elapsed) s)"
timeout $(( budget / 4 )) "$py" benchmarks/bench_step.py --input --device "$device" --preset "$preset" \
    --batch-sizes "$batch" ${out:+--out "$out"} \
    || echo "input side: failed or out of its $(( budget / 4 )) s"

# 2. the training step; eager configurations first, then compiled ones, then the rest while time is left
configs=fp32,bf16,bf16+channels_last,bf16+compile,fp32+compile,bf16+channels_last+fused+nosync+cudnn_benchmark
configs=$configs,bf16+nosync,bf16+fused,bf16+cudnn_benchmark
left=$(( budget - $(elapsed) - 10 ))
echo; echo "== 2. training step ($(elapsed) s, ${left} s left)"
"$py" benchmarks/bench_step.py --device "$device" --preset "$preset" --batch-sizes "$batch" --configs "$configs" \
    --flops --warmup "$warmup" --steps "$steps" --time-budget "$left" --compile-budget 150 --compile-on-cpu \
    --wait-quiet 0 ${out:+--out "$out"} \
    || echo "training step: failed"

if [ -n "$out" ]; then
    { echo "# gpu.sh summary"; echo
      echo "device $device, preset $preset, batch $batch, $(elapsed) s in all"; echo
      for f in input step; do [ -f "$out/$f.md" ] && { cat "$out/$f.md"; echo; }; done; } > "$out/summary.md"
fi
echo; echo "== done in $(elapsed) s"
