#!/usr/bin/env bash
# Everything to check and measure on a CUDA machine, in one call: the steps named run in the order below, each
# under its own time limit and all within BUDGET seconds (default 560), so that a call of the device tool's
# 600 s returns with every log. Each step's whole output goes to $OUT/<step>.log (default ./gpu-logs); its tail
# is printed.
#
#     bash benchmarks/gpu_session.sh [step ...]      (default: data tests whole-run first-use epochs)
#
# The default call (issue 25, about ten minutes on one H100): the CUDA tests (the graphed-vs-eager test and the
# batch-norm check after it among them) while the data is generated; then C-50 with the defaults (`auto` device
# options), start to finish in its own process, projected from real epochs, unconfined and under `taskset -c 0,1`;
# then the first epoch taken apart: each batch shape's first use against its second, and the graph's capture, in a
# fresh process; then real epochs in one process, the first epoch by phase against a steady one.
# Steps, in the order they run:
#   data            generates the data the wanted steps read, in the background (CPU only), so that it is ready
#                   when the first timed step starts; timed steps wait for it
#   tests           the CUDA tests (correctness on the GPU; runs while data is generated), but the one that compiles
#   whole-run       `python train.py --config configs/thesis/C-50.yml -d DATA --set num_epochs=EPOCHS` and
#                   nothing else, timed from process start to exit (image cache build, every epoch, checkpoints),
#                   projected to C-50; then the same confined to cores 0 and 1 (benchmarks/whole_run.py)
#   first-use       each training and validation batch shape's first use against its second, and the training
#                   step's warm-up and capture, in a fresh process (benchmarks/first_use.py)
#   graph-test      that one: compiled training steps under CUDA graphs against eager ones (also while the data is
#                   generated; its 64 px graphs share no compiled kernels with the 227 px steps)
#   graph-throughput model-only vs full pipeline with cuda_graphs on (each training batch's preprocessing,
#                   forward, loss and backward replayed as one CUDA graph), the network eager and compiled
#                   (compile_mode default)
#   graph-epochs    real epochs of train() with cuda_graphs on, no compile: the C-50 projection and where each
#                   epoch's time goes; then again with async_checkpoints off, side by side
#   graph-compile-epochs the same with compile on (compile_mode default), compilation included
#   compile-epochs  real epochs of train() with compile on (COMPILE_MODE overrides the mode): the C-50 projection,
#                   compilation included, and where each epoch's time goes; the first compiling step of a call on a
#                   fresh machine finds torch.compile's caches cold, as a user's first run does (on an H100: 129 s
#                   of compilation cold, 52 s warm, 2026-11-26)
#   throughput      model-only vs full pipeline, fp32, channels_last on, compile off and on (the config's
#                   compile_mode, reduce-overhead: CUDA graphs)
#   compile-default the same with compile_mode default (slower than eager on an H100, 2026-11-26)
#   step-graph      model-only steps: compile reduce-overhead against the whole step in one CUDA graph (eager and
#                   compiled network, then with the preprocessing) and against cuda_graphs' TrainingGraph (forward,
#                   loss and backward; eager and compiled network; eager with the preprocessing), each variant
#                   printed as soon as it is measured
#   profile         where a full-pipeline step spends its time, compile on: the host per Lightning action, the GPU
#                   busy share and its kernels, against the model-only loop's (profile-eager: the same, compile off)
#   overhead syncs pipeline epochs   Lightning's host time per step, host-device syncs per batch, the data
#                   pipeline, real epochs with compile off
# Scaled down for a dry run on a CPU (no verdicts then):
#   PYTHON=python BATCHES=20 SIZE=64 BATCH=8 TRAIN=48 TEST=24 EPOCHS=2 bash benchmarks/gpu_session.sh data profile epochs
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-560}
BATCHES=${BATCHES:-100}
SIZE=${SIZE:-227}
BATCH=${BATCH:-64}
TRAIN=${TRAIN:-8144}   # C-50's split sizes for the epoch steps
TEST=${TEST:-8041}
EPOCHS=${EPOCHS:-3}
BENCH="--batches $BATCHES --image-size $SIZE --batch-size $BATCH --precisions 32-true --channels-last on"
BENCH_DATA=/tmp/cars-bench-throughput
EPOCH_DATA=/tmp/cars-bench-epochs
PROFILE_DATA=/tmp/cars-bench-profile
# The fastest setting measured on an H100 (2026-11-26): fp32 beat bf16-mixed there (see benchmarks/RESULTS.md).
FAST="gpu_augmentations=true channels_last=true image_size=[$SIZE,$SIZE] batch_size=$BATCH"
START=$(date +%s)
DATA_PID=""

left() { echo $((BUDGET - ($(date +%s) - START))); }

wait_for_data() {
    if [ -n "$DATA_PID" ]; then
        wait "$DATA_PID"
        echo "--- data: ready after $(($(date +%s) - START)) s (exit $?)"
        DATA_PID=""
    fi
}

step() {
    local name=$1 limit=$2 start rc remaining
    shift 2
    remaining=$(($(left) - 5))
    if [ "$remaining" -lt 30 ]; then
        echo "=== $name: skipped, ${remaining} s of the budget left"
        return
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "=== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "--- $name: exit $rc after $(($(date +%s) - start)) s"
    grep -v "it/s\]\|s/it\]" "$OUT/$name.log" | tail -n "${TAIL:-22}"
}

want() { [[ " $WANTED " == *" $1 "* ]]; }
WANTED=" ${*:-data tests whole-run first-use epochs} "

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $PY -c "import sys, torch, torchvision, pytorch_lightning, torchmetrics, PIL; print(sys.version.split()[0], \
torch.__version__, torchvision.__version__, pytorch_lightning.__version__, torchmetrics.__version__, PIL.__version__)"
    nproc
} >"$OUT/env.log" 2>&1
cat "$OUT/env.log"

if want data; then
    # Only the folders the wanted steps read, the profile's (smallest) first. Sizes: training_throughput's with
    # compile on, (5 warm-up + BATCHES) x BATCH per split; step_profile's, 10 warm-up batches.
    NEEDS=()
    { want profile || want profile-eager; } && NEEDS+=("'$PROFILE_DATA', (10 + 30) * $BATCH, $BATCH")
    { want throughput || want compile-default || want graph-throughput; } && NEEDS+=("'$BENCH_DATA', (5 + $BATCHES) * $BATCH, (5 + $BATCHES) * $BATCH")
    { want compile-epochs || want epochs || want graph-epochs || want graph-compile-epochs || want whole-run; } && NEEDS+=("'$EPOCH_DATA', $TRAIN, $TEST")
    $PY -c "
from pathlib import Path
from benchmarks.common import generate_prepared
for folder, train, test in [$(IFS=,; for need in "${NEEDS[@]}"; do printf '(%s),' "$need"; done)]:
    generate_prepared(Path(folder), train, test)
" >"$OUT/data.log" 2>&1 &
    DATA_PID=$!
fi

want tests && step tests 200 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "not cuda_graphs" \
    "tests/datasets/device_augmentation/test_augmenter.py::test_cuda_batch_stays_on_device_and_seeds_reproduce"
# While the data is generated too (correctness only).
want graph-test && step graph-test 150 $PY -m pytest -q -s -p no:cacheprovider tests/test_cuda.py -k cuda_graphs
wait_for_data
# Start to finish as a user runs it: the defaults (no --set but the epoch count), then on 2 cores (a Colab-like host).
WHOLE_SET=""
{ [ "$SIZE" != 227 ] || [ "$BATCH" != 64 ]; } && WHOLE_SET="--set image_size=[$SIZE,$SIZE] batch_size=$BATCH"
want whole-run && step whole-run 280 $PY -m benchmarks.whole_run --epochs "$EPOCHS" --train-images "$TRAIN" \
    --test-images "$TEST" --data-dir $EPOCH_DATA --versus-cpus 0,1 $WHOLE_SET
want first-use && step first-use 90 $PY -m benchmarks.first_use --image-size $SIZE --batch-size $BATCH \
    --train-images "$TRAIN" --test-images "$TEST"
want graph-throughput && step graph-throughput 200 $PY -m benchmarks.training_throughput $BENCH --compile both \
    --compile-mode default --cuda-graphs --data-dir $BENCH_DATA
# Then the same without async_checkpoints: what writing the checkpoints from a thread saves per epoch.
want graph-epochs && step graph-epochs 150 $PY -m benchmarks.epoch_time --epochs "$EPOCHS" --train-images "$TRAIN" \
    --test-images "$TEST" --data-dir $EPOCH_DATA --set $FAST cuda_graphs=true --versus async_checkpoints=false
want graph-compile-epochs && step graph-compile-epochs 300 $PY -m benchmarks.epoch_time --epochs "$EPOCHS" \
    --train-images "$TRAIN" --test-images "$TEST" --data-dir $EPOCH_DATA --set $FAST cuda_graphs=true compile=true \
    compile_mode=default
# Real epochs: the first pays the compilation, later ones show the steady rate; the projection counts it once.
want compile-epochs && step compile-epochs 240 $PY -m benchmarks.epoch_time --epochs "$EPOCHS" --train-images "$TRAIN" \
    --test-images "$TEST" --data-dir $EPOCH_DATA --set $FAST compile=true ${COMPILE_MODE:+compile_mode=$COMPILE_MODE}
want throughput && step throughput 240 $PY -m benchmarks.training_throughput $BENCH --compile both \
    --data-dir $BENCH_DATA
want compile-default && step compile-default 240 $PY -m benchmarks.training_throughput $BENCH --compile on \
    --compile-mode default --data-dir $BENCH_DATA
# 30 steps: torch.profiler's trace of 100 took too long to read back within the limit (2026-11-26).
want step-graph && step step-graph 200 $PY -m benchmarks.diagnostics.step_graph --batches $BATCHES --image-size $SIZE \
    --batch-size $BATCH
want profile && step profile 200 $PY -m benchmarks.diagnostics.step_profile --batches 30 --data-dir $PROFILE_DATA \
    --set $FAST compile=true
want profile-eager && step profile-eager 100 $PY -m benchmarks.diagnostics.step_profile --batches 30 \
    --data-dir $PROFILE_DATA --set $FAST
want overhead && step overhead 60 $PY -m benchmarks.diagnostics.loop_overhead --rounds 3
want syncs && step syncs 120 $PY -m benchmarks.diagnostics.sync_report --batches 20 --set gpu_augmentations=true channels_last=true
want pipeline && step pipeline 150 $PY -m benchmarks.data_pipeline --images 1024 --epochs 3
want epochs && step epochs 200 $PY -m benchmarks.epoch_time --epochs "$EPOCHS" --train-images "$TRAIN" --test-images "$TEST" \
    --data-dir $EPOCH_DATA --set $FAST
wait_for_data
echo "=== done after $(($(date +%s) - START)) s"
exit 0
