#!/usr/bin/env bash
# Issue 22's GPU checks, as one prepared run on a lent device machine (docs/augmentation.md, "The learner on a GPU").
#
# Here, first:   bash benchmarks/device/wheels.sh
# Then one device call, from the repository root, carrying the wheels:
#   run(command="bash benchmarks/device/issue22.sh", carry=[".whl"], timeout_s=600)
# It writes its logs and JSON under $OUT (or /tmp/issue22 without one) and keeps within about 9 minutes:
#   1. the learner on the GPU while fine simulations stream in from CPU workers (augmentation_gpu.py):
#      learner busy share and nvidia-smi's GPU utilisation, per model and batch size;
#   2. the payoff table on the GPU (augmentation_speedup.py), 16^2 against 64^2 (its models trained in-process
#      and, --online, through the runtime with the learner on the GPU), then 32^2 against 128^2.
# Each part has its own time limit, so a slow part leaves the others their time and its log up to where it got.
# SMOKE=1 runs every part at its smallest size (the code path, on any machine); PY picks the interpreter.
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/issue22}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
cd benchmarks
{ nvidia-smi -L; nproc; "$PY" -c "import jax, flax, optax, dask, distributed; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'dask', dask.__version__)"; } 2>&1 | tee "$OUT/env.log"
part() {  # part SECONDS NAME COMMAND...: run with a time limit, log to $OUT/NAME.log
    local limit=$1 name=$2; shift 2
    echo "== $name (at most ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    grep -v 'Warning\|warn(' "$OUT/$name.log" | tail -25
    echo "== $name: rc $rc after $((SECONDS - t0))s"
}
if [ "${SMOKE:-0}" = 1 ]; then
    part 300 gpu_busy "$PY" augmentation_gpu.py --quick --models closure --json "$OUT/gpu_busy.json"
    part 300 speedup16 "$PY" augmentation_speedup.py --tiny --online --json "$OUT/speedup16_gpu.json"
    exit
fi
part 170 gpu_busy "$PY" augmentation_gpu.py --models closure tendency --batch 8 64 --steps 1000 --sim-workers 8 --json "$OUT/gpu_busy.json"
part 190 speedup16 "$PY" augmentation_speedup.py --quick16 --model closure tendency --schedules 32 --learned-step 4 \
    --eval-time 20 --eval-runs 32 --plain-steps 1 2 4 --online --workers 8 --json "$OUT/speedup16_gpu.json"
part 170 speedup32 "$PY" augmentation_speedup.py --quick --model cnn tendency --json "$OUT/speedup32_gpu.json"
