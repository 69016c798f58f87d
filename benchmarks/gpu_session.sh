#!/usr/bin/env bash
# Everything measured on a lent GPU machine, in one call of under 9 minutes
# (see ../shared/gpu/README.md; the machine has no package registry).
#
# Here, once, from the project root:
#   bash ../shared/gpu/fetch-wheels.sh blackjax && cp ../shared/gpu/gpu-setup.sh .gpu/
#   .venv/bin/python -m pip download diffopt==2.0.0 --no-deps -d .gpu/ref
#   .venv/bin/python -m zipfile -e .gpu/ref/diffopt-2.0.0-py3-none-any.whl .gpu/diffopt2
# Then, with .gpu carried:
#   bash benchmarks/gpu_session.sh
#
# 1. benchmarks/bench_gpu.py (issue 15), the released 2.0.0 as the reference;
# 2. two ranks sharing the GPU (issue 17): the GPU each rank got and the
#    memory policy diffopt set, then the 2-rank exactness test on the GPU;
# 3. benchmarks/kernel_draw.py at N = 1e7: what KCalc's kernel draw costs there.
# Logs go to $OUT (or /tmp/gpu-session); each step is bounded in time, so
# whatever finished is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-/tmp/gpu-session}; mkdir -p "$LOGS"
start=$SECONDS
source .gpu/gpu-setup.sh > "$LOGS/setup.log" 2>&1; tail -n 3 "$LOGS/setup.log"
echo "== setup: $((SECONDS - start)) s"
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
step bench_gpu 330 "$PY" benchmarks/bench_gpu.py --reference .gpu/diffopt2 --repeats 5
step kernel_draw 90 "$PY" benchmarks/kernel_draw.py --npoints 10000000
unset XLA_PYTHON_CLIENT_PREALLOCATE XLA_PYTHON_CLIENT_MEM_FRACTION CUDA_VISIBLE_DEVICES
export DIFFOPT_MPIEXEC="$MPIEXEC"
read -r -a LAUNCH <<< "$MPIEXEC"
step rank_gpus 60 "${LAUNCH[@]}" -n 2 "$PY" tests/gpu/rank_gpus.py 2
step exact_2_ranks_on_gpu 90 "${LAUNCH[@]}" -n 2 "$PY" tests/mpi/multigrad_exact.py 2
echo "== total $((SECONDS - start)) s"
