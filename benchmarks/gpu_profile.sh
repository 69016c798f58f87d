#!/usr/bin/env bash
# Where kdescent's GPU time goes, in one call of about 3 minutes on a lent
# H100/H200. It needs nothing beyond the machine's own jax, so .gpu need not
# be carried:
#   bash benchmarks/gpu_profile.sh
# 1. benchmarks/profile_kdescent.py at N = 1e7: each variant's compile, scratch
#    memory, per-call time and busiest kernels (optimised HLO kept in $OUT);
# 2. benchmarks/compile_split.py in fresh processes: the first call with and
#    without the barrier on the points' cotangents;
# 3. section 1 of benchmarks/bench_gpu.py at N = 1e7 and 1e6, variants included.
# Logs go to $OUT (or /tmp/gpu-session).
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-/tmp/gpu-session}; mkdir -p "$LOGS"
start=$SECONDS
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PYTHONPATH=$PWD
PY=/opt/torch/.venv/bin/python3; [ -x "$PY" ] || PY=$(command -v python3)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}
step profile 200 "$PY" benchmarks/profile_kdescent.py --npoints 10000000 --calls 5 --out "$LOGS/profile"
step compile_default 60 "$PY" benchmarks/compile_split.py
step compile_no_barrier 60 "$PY" benchmarks/compile_split.py --no-barrier
step bench_kernels 200 "$PY" benchmarks/bench_gpu.py --skip 2,3 --npoints 10000000,1000000 --repeats 10
echo "== total $((SECONDS - start)) s"
