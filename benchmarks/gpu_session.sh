#!/usr/bin/env bash
# Everything to check and measure on a CUDA machine, most valuable first: the CUDA tests, Lightning's host time per
# step, training throughput (model-only vs full pipeline, compile off, then on), real epochs with compile on (the
# C-50 projection, compilation included), then where the training loop waits for the GPU, the data pipeline, real
# epochs with compile off and compile's CUDA graphs. Each step's whole output goes to $OUT/<step>.log (default
# ./gpu-logs); its tail is printed.
#
#     bash benchmarks/gpu_session.sh [step ...]      (default: every step)
#
# Steps: tests overhead throughput compile compile-epochs syncs pipeline epochs compile-graphs. On an H100
# (2026-11-26) tests, syncs, pipeline, throughput (both precisions) and epochs took about 7 minutes together; compile
# did not finish in the 2 minutes left of that call, so give the compile steps a call of their own, e.g.
# `tests overhead throughput` in one call and `compile compile-epochs` in the next. throughput and compile print
# each setting as it is measured, the epoch steps each epoch (in $OUT/<step>.log).
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# The fastest setting measured on an H100 (2026-11-26): fp32 beat bf16-mixed there (see documentation/performance.md).
FAST="gpu_augmentations=true channels_last=true"

step() {
    local name=$1 limit=$2 start rc
    shift 2
    echo "=== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "--- $name: exit $rc after $(($(date +%s) - start)) s"
    grep -v "it/s\]\|s/it\]" "$OUT/$name.log" | tail -n "${TAIL:-22}"
}

want() { [ -z "$WANTED" ] || [[ " $WANTED " == *" $1 "* ]]; }
WANTED=" $* "
[ $# -eq 0 ] && WANTED=""

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $PY -c "import sys, torch, torchvision, pytorch_lightning, torchmetrics, PIL; print(sys.version.split()[0], \
torch.__version__, torchvision.__version__, pytorch_lightning.__version__, torchmetrics.__version__, PIL.__version__)"
    nproc
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

want tests && step tests 200 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_device_augment.py::test_cuda_batch_stays_on_device_and_seeds_reproduce"
# Lightning's host time per step on this machine's CPU (about 10 s).
want overhead && step overhead 60 $PY -m benchmarks.loop_overhead --rounds 3
# fp32 only: bf16-mixed was slower than fp32 for GhostNet on the H100 (2026-11-26).
want throughput && step throughput 240 $PY -m benchmarks.training_throughput --batches 100 --compile off \
    --precisions 32-true --data-dir /tmp/cars-bench-throughput
want compile && step compile 420 $PY -m benchmarks.training_throughput --batches 100 --compile on \
    --precisions 32-true --channels-last on --data-dir /tmp/cars-bench-throughput
# Real epochs with compile on: the first pays the compilation (and the last batch's recompile), later ones show
# the steady rate; the C-50 projection counts the compilation once.
want compile-epochs && step compile-epochs 420 $PY -m benchmarks.epoch_time --epochs 3 \
    --data-dir /tmp/cars-bench-epochs --set $FAST compile=true
want syncs && step syncs 120 $PY -m benchmarks.sync_report --batches 20 --set $FAST
want pipeline && step pipeline 150 $PY -m benchmarks.data_pipeline --images 1024 --epochs 3
want epochs && step epochs 200 $PY -m benchmarks.epoch_time --epochs 4 --data-dir /tmp/cars-bench-epochs --set $FAST
# CUDA graphs (torch.compile's reduce-overhead mode): replays each step's kernels without launching them one by one.
want compile-graphs && step compile-graphs 420 $PY -m benchmarks.training_throughput --batches 100 --compile on \
    --compile-mode reduce-overhead --precisions 32-true --channels-last on --data-dir /tmp/cars-bench-throughput
exit 0
