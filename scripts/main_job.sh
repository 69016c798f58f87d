#!/usr/bin/env bash
# The main job: the seed stellar-mass-function fit on 2 MPI ranks (loss and
# gradient compared with one rank, then BFGS), and the kdescent 5-parameter
# fit. Prints fitted parameters next to the truth and writes PNGs to ./out.
#
# MPI jobs start with $DIFFOPT_MPIEXEC (for example `srun` or a site's
# mpiexec), else the environment's mpiexec: see scripts/mpi_launcher.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
# The environment's bin/ first on PATH, and Open MPI's settings as variables
# (root, more ranks than cores), which other MPIs ignore.
export PATH="$PWD/.venv/bin:$PATH" MPLBACKEND=Agg
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_rmaps_base_oversubscribe=1 PRTE_MCA_rmaps_default_mapping_policy=:oversubscribe
read -r -a MPIEXEC <<< "${DIFFOPT_MPIEXEC:-mpiexec}"
# An empty TMPDIR of the job's own: Open MPI 5 will not start where a killed
# job left session files under the process id its mpiexec gets.
TMPDIR="$(mktemp -d)"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
mkdir -p out
# Keep every compiled program in out/jax-cache, as
# diffopt.enable_compilation_cache("out/jax-cache") does from Python: a second
# run of the job reads them back instead of compiling.
export JAX_COMPILATION_CACHE_DIR="$PWD/out/jax-cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
echo "== multigrad: loss and gradient, 1 rank vs 2 ranks"
"$PY" examples/smf_compare_ranks.py
"${MPIEXEC[@]}" -n 2 "$PY" examples/smf_compare_ranks.py
echo "== multigrad: BFGS fit of the SMF model on 2 ranks"
(cd out && "${MPIEXEC[@]}" -n 2 "$PY" ../examples/smf_grad_descent.py)
echo "== kdescent: 5-parameter fit"
(cd out && "$PY" ../examples/kdescent_quickstart.py)
echo "Plots written to $(pwd)/out:"; ls out/*.png
