#!/usr/bin/env bash
# The README's quick start, as a new user runs it, with its printed block stored:
#   bash benchmarks/quick_start.sh                 # -> benchmarks/results/quick_start.txt
#   bash benchmarks/quick_start.sh --seed 1 ...    # more train.py options (another seed, a GFL)
# It runs `python train.py` into a fresh folder (runs/quick-start-check, replaced), times it, and keeps the
# last epoch's lines and the verdict (the progress bars left out), with the machine, torch and the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/quick-start-check
py=${PYTHON:-python}
mkdir -p runs benchmarks/results
log=$(mktemp)
start=$(date +%s)
"$py" train.py --out "$out" --overwrite "$@" >"$log" 2>&1
seconds=$(( $(date +%s) - start ))
{
    echo "\$ python train.py $*    # $(( seconds / 60 )) min $(( seconds % 60 )) s"
    grep -v "it/s\]\|it\]$\|^{\|^ *\"\|^}\|rendering" "$log" | grep -A100 "^epoch=$(grep -c '^epoch=' "$log")" || true
    echo
    echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs);" \
         "torch $("$py" -c 'import torch; print(torch.__version__)'); commit $(git rev-parse --short HEAD)"
} > benchmarks/results/quick_start.txt
cat benchmarks/results/quick_start.txt
rm -f "$log"
