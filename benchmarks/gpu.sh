#!/usr/bin/env bash
# The GPU suite in one run (about 6 minutes on one H200 with the default configurations):
#   1. the pure step: bench_step.py (train.py's Trainer.step on random uint8 batches) per configuration;
#   2. train.py end to end on synthetic faces (loader workers, the step, the log) at the same batch, with the views
#      augmented in the loader and on the device (--augment): images/s of its second epoch from metrics.jsonl, and
#      its ratio to the pure step of the configuration train.py ran ($precision+channels_last, its default layout);
#   3. peak memory at the same batch with and without activation checkpointing, under a cap of --cap-gib GiB
#      of GPU memory (torch.cuda.set_per_process_memory_fraction; default 15 GiB, what a 16 GB T4 offers).
# Every bench_step.py configuration runs in a fresh process. Prints everything; with OUT=<folder> set, also writes
# step.md, memory.md, train.md, train_metrics_*.jsonl, summary.md and gpu.log there.
#
#   OUT=/tmp/gpu bash benchmarks/gpu.sh                      # on the GPU machine: paper preset, batch 256
#   OUT=/tmp/cpu bash benchmarks/gpu.sh --device cpu --preset tiny --batch-size 8 --steps 4 --workers 1
#                                                            # dry run of the same code path on a CPU (no cap there)
# Options: --device D, --preset tiny|paper, --batch-size N, --precision fp32|bf16|fp16 (default bf16),
#   --configs LIST (bench_step.py's; add e.g. bf16+channels_last+compile, ~3 min to compile),
#   --steps N (train.py --max-steps per epoch; 2 epochs), --workers N (train.py's loader), --cap-gib G.
set -euo pipefail
cd "$(dirname "$0")/.."
invocation="bash benchmarks/gpu.sh $*"

device=cuda preset=paper batch=256 precision=bf16 steps=20 workers=16 cap=15 configs=
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --preset) preset=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        --precision) precision=$2; shift 2 ;;
        --configs) configs=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --cap-gib) cap=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
matched=$precision+channels_last  # what train.py runs below
configs=${configs:-fp32,bf16,$matched,$matched+ckpt,fp16+channels_last}
py=${PYTHON:-python3}
command -v "$py" >/dev/null || py=python
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
exec > >(tee "$out/gpu.log") 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

echo "== gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): device $device, preset $preset, batch $batch, precision $precision"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo; echo "== 1. the pure step ($(elapsed) s)"
"$py" benchmarks/bench_step.py --device "$device" --preset "$preset" --batch-size "$batch" --configs "$configs" \
    --warmup 3 --steps 10 --out "$out" --name step

echo; echo "== 2. train.py end to end, views augmented in the loader and on the device ($(elapsed) s)"
for augment in loader device; do
    run=$(mktemp -d)  # its last.pt (GBs at the paper preset) stays out of $out
    "$py" train.py --data synthetic --num-synthetic $(( batch * steps )) --preset "$preset" --batch-size "$batch" \
        --epochs 2 --max-steps "$steps" --workers "$workers" --device "$device" --precision "$precision" \
        --augment $augment --probe false --knn-samples 0 --out "$run"
    cp "$run/metrics.jsonl" "$out/train_metrics_$augment.jsonl" && rm -rf "$run"
done
"$py" - "$out" "$matched" "$steps" "$workers" <<'EOF'
import json, sys
out, matched, steps, workers = sys.argv[1:]
rows = json.load(open(f"{out}/step.json"))["rows"]
step = next(r for r in rows if r["config"] == matched and "error" not in r)
pure = step["batch"] / step["step_s"]
lines = ["| what | images/s | x pure step |", "|---|---|---|", f"| pure step, {matched} (bench_step.py) | {pure:.1f} | 1.00 |"]
for augment in ("loader", "device"):
    last = [json.loads(line) for line in open(f"{out}/train_metrics_{augment}.jsonl")][-1]  # epoch 2: workers warm
    lines.append(f"| train.py --augment {augment}, epoch {last['epoch']} of 2 ({steps} steps, {workers} workers) "
                 f"| {last['images_per_s']:.1f} | {last['images_per_s'] / pure:.2f} |")
open(f"{out}/train.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

echo; echo "== 3. peak memory with and without activation checkpointing, cap ${cap} GiB ($(elapsed) s)"
fraction=$("$py" -c "import torch; d = torch.device('$device')
print(min(1.0, $cap * 2**30 / torch.cuda.get_device_properties(d).total_memory) if d.type == 'cuda' else '')")
"$py" benchmarks/bench_step.py --device "$device" --preset "$preset" --batch-size "$batch" \
    --configs "$matched,$matched+ckpt" --warmup 1 --steps 3 ${fraction:+--memory-fraction "$fraction"} \
    --out "$out" --name memory

echo; echo "== 4. host syncs per step; the precision auto picks ($(elapsed) s)"
"$py" benchmarks/count_syncs.py --device "$device" --preset "$preset" --batch-size 32 --steps 5 --precision auto \
    | tee "$out/syncs.txt"

echo; echo "== 5. the quick start, and one paper-preset epoch with --precision auto ($(elapsed) s)"
run=$(mktemp -d)
t0=$(date +%s)
"$py" train.py --device "$device" --out "$run/quick" 2>&1 | grep -v "it/s" | tail -12 | tee "$out/quick_start.txt"
echo "quick start: $(( $(date +%s) - t0 )) s" | tee -a "$out/quick_start.txt"
if [ "$preset" = paper ]; then
    t0=$(date +%s)
    "$py" train.py --device "$device" --preset paper --num-synthetic 12271 --epochs 1 --workers "$workers" \
        --precision auto --probe false --knn-samples 0 --out "$run/paper" 2>&1 | grep -v "it/s" | tail -4 \
        | tee "$out/paper_epoch.txt"
    echo "one paper-preset epoch, 12,271 faces: $(( $(date +%s) - t0 )) s" | tee -a "$out/paper_epoch.txt"
fi
rm -rf "$run"

{ echo "# gpu.sh summary"; echo
  echo "\`$invocation\` ($(elapsed) s in all): device $device, preset $preset, batch $batch, precision $precision"; echo
  echo "## 1. the pure step"; echo; cat "$out/step.md"; echo
  echo "## 2. train.py end to end"; echo; cat "$out/train.md"; echo
  echo "## 3. memory, cap ${cap} GiB (fraction ${fraction:-none: not a GPU})"; echo; cat "$out/memory.md"; echo
  echo "## 4. host syncs"; echo; echo '```'; cat "$out/syncs.txt"; echo '```'; echo
  echo "## 5. quick start and a paper-preset epoch"; echo; echo '```'; cat "$out/quick_start.txt"
  cat "$out/paper_epoch.txt" 2>/dev/null || true; echo '```'; } \
    > "$out/summary.md"
echo; echo "== done in $(elapsed) s; summary: $out/summary.md"
