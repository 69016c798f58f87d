#!/usr/bin/env bash
# diffopt's cluster support on a lent GPU machine (../shared/gpu/README.md):
# system Open MPI's mpiexec as the launcher, 2 ranks sharing one GPU.
#
#   source .gpu/gpu-setup.sh && bash tests/gpu/cluster_check.sh [--system-mpi]
#
# .gpu/ is prepared here first (../shared/gpu/README.md), with the mpi4py
# sdist for --system-mpi:
#   bash ../shared/gpu/fetch-wheels.sh && cp ../shared/gpu/gpu-setup.sh .gpu/
#   python3 -m pip download -q --no-deps --no-binary mpi4py -d .gpu/sdist mpi4py
#
# 1. the GPUs diffopt counts without starting CUDA;
# 2. the launcher check (scripts/mpi_launcher.py) with the system mpiexec;
# 3. 2 ranks sharing the GPU: the GPU each got and diffopt's memory policy
#    (XLA_PYTHON_CLIENT_PREALLOCATE is unset first: diffopt must set it);
# 4. the 2-rank exactness test (tests/mpi/multigrad_exact.py) on the GPU;
# 5. examples/cluster/smf_fit_mpiexec.sh: the seed SMF fit, 1e8 halos, 2 ranks;
# 6. with --system-mpi (needs /usr/bin/mpicc and the mpi4py and mpi4jax
#    sdists in .gpu/sdist): mpi4py and mpi4jax compiled against the system
#    MPI, as setup.sh --system-mpi does, then 2 and 4 again.
# Logs go to $OUT (or /tmp/cluster-check). Each step is bounded in time.
# SMF_HALOS=2e4 makes step 5 small enough for a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
LOGS=${OUT:-/tmp/cluster-check}; mkdir -p "$LOGS"
: "${PY:?source .gpu/gpu-setup.sh first}" "${MPIEXEC:?source .gpu/gpu-setup.sh first}"
export DIFFOPT_MPIEXEC="$MPIEXEC"
unset XLA_PYTHON_CLIENT_PREALLOCATE XLA_PYTHON_CLIENT_MEM_FRACTION CUDA_VISIBLE_DEVICES
# The example job scripts call `python`.
mkdir -p /tmp/pybin && printf '#!/bin/sh\nexec "%s" "$@"\n' "$PY" > /tmp/pybin/python
chmod +x /tmp/pybin/python && export PATH=/tmp/pybin:$PATH
failed=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local status=$?
    tail -n 25 "$LOGS/$name.log"
    echo "== $name: exit $status after $((SECONDS - start)) s"
    [ "$status" = 0 ] || failed=1
}
read -r -a LAUNCH <<< "$DIFFOPT_MPIEXEC"
nvidia-smi -L; ls /proc/driver/nvidia/gpus
step count-gpus 60 "$PY" -c "from diffopt._gpus import count_gpus; print('diffopt counts', count_gpus(), 'GPU(s)')"
step launcher-check 180 "$PY" scripts/mpi_launcher.py
step rank-gpus 180 "${LAUNCH[@]}" -n 2 "$PY" tests/gpu/rank_gpus.py 2
step exact-2-ranks 300 "${LAUNCH[@]}" -n 2 "$PY" tests/mpi/multigrad_exact.py 2 4
step smf-1e8 300 env NRANKS=2 NUM_HALOS="${SMF_HALOS:-1e8}" bash examples/cluster/smf_fit_mpiexec.sh
if [ "${1:-}" = --system-mpi ]; then
    if [ -x /usr/bin/mpicc ] && ls .gpu/sdist/mpi4py-*.tar.gz >/dev/null 2>&1; then
        step build-system-mpi 300 bash -c '
            MPICC=/usr/bin/mpicc "$0" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
                --no-binary mpi4py --target /tmp/sysmpi .gpu/sdist/mpi4py-*.tar.gz &&
            PYTHONPATH=/tmp/sysmpi:$PYTHONPATH MPI4JAX_BUILD_MPICC=/usr/bin/mpicc CUDA_PATH=/usr/local/cuda \
                "$0" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
                --target /tmp/sysmpi .gpu/sdist/mpi4jax-*.tar.gz' "$PY"
        export PYTHONPATH=$PWD:/tmp/sysmpi:${PYTHONPATH#"$PWD:"}
        step system-launcher-check 180 "$PY" scripts/mpi_launcher.py
        step system-exact-2-ranks 300 "${LAUNCH[@]}" -n 2 "$PY" tests/mpi/multigrad_exact.py 2 4
    else
        echo "== --system-mpi: skipped, no /usr/bin/mpicc or no .gpu/sdist/mpi4py-*.tar.gz"; failed=1
    fi
fi
echo "== cluster check: $([ "$failed" = 0 ] && echo all steps passed || echo SOME STEPS FAILED) (logs in $LOGS)"
exit "$failed"
