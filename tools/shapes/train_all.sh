#!/usr/bin/env bash
# The default model's world trained from scratch in one sitting of about two hours on the
# 2-core machine, left alone while it runs: VQ-VAE (8 min), its decoder alone (5 min),
# MM-DiT + text encoder (103 min, the first 80% on 24 text positions), export with greedy
# draws and 24 text-to-image steps as the model's defaults (`--sample` gives sampled ones).
# Prints each stage's wall time; the model lands in OUT, then `muddit eval --model OUT` judges it.
#
#   bash tools/shapes/train_all.sh WORK OUT [PYTHON] [MUDDIT_SRC]
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 WORK OUT [PYTHON] [MUDDIT_SRC]" >&2
    exit 2
fi
work=$(realpath -m "$1")
out=$(realpath -m "$2")
py=${3:-/work/pyenv/bin/python}
src=${4:-/tmp/muddit-src}
if [ -e "$out" ]; then
    echo "$out exists: give a new folder for the model" >&2
    exit 2
fi
mkdir -p "$work"
cd "$(dirname "$0")"
start=$(date +%s)
stage() { echo "== $1 at $(( $(date +%s) - start )) s"; }

stage "VQ-VAE"
"$py" train_vq.py --out "$work" --minutes 8 --batch 16 --images 8000 --threads 2
stage "VQ-VAE decoder"
"$py" train_vq.py --out "$work" --decoder-only --minutes 5 --batch 16 --images 6000 --threads 2
stage "MM-DiT + text encoder"
"$py" train_mmdit.py --muddit-src "$src" --work "$work" --layers 6 6 --minutes 103 \
    --images 20000 --batch 24 4 4 --lr 1.5e-3 --warmup 200 --uncond 0.1 --eval-every 20 \
    --seed 7 --threads 2 --short-text 24 --short-until 0.8
stage "export"
"$py" export.py --muddit-src "$src" --work "$work" --out "$out" --greedy --t2i-steps 24
stage "done"
