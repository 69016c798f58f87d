#!/usr/bin/env bash
# The main job: the seed stellar-mass-function fit on 2 MPI ranks (loss and
# gradient compared with one rank, then BFGS), and the kdescent 5-parameter
# fit. Prints fitted parameters next to the truth and writes PNGs to ./out.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 MPLBACKEND=Agg
mkdir -p out
# Keep every compiled program in out/jax-cache, as
# diffopt.enable_compilation_cache("out/jax-cache") does from Python: a second
# run of the job reads them back instead of compiling.
export JAX_COMPILATION_CACHE_DIR="$PWD/out/jax-cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
echo "== multigrad: loss and gradient, 1 rank vs 2 ranks"
.venv/bin/python examples/smf_compare_ranks.py
.venv/bin/mpiexec -n 2 --oversubscribe .venv/bin/python examples/smf_compare_ranks.py
echo "== multigrad: BFGS fit of the SMF model on 2 ranks"
(cd out && ../.venv/bin/mpiexec -n 2 --oversubscribe ../.venv/bin/python ../examples/smf_grad_descent.py)
echo "== kdescent: 5-parameter fit"
(cd out && ../.venv/bin/python ../examples/kdescent_quickstart.py)
echo "Plots written to $(pwd)/out:"; ls out/*.png
