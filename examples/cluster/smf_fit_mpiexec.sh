#!/usr/bin/env bash
# The seed SMF fit with 1e8 halos, started with mpiexec: on a machine with
# several GPUs, or across the hosts of a hostfile (without a scheduler).
#
#   NRANKS=4 bash examples/cluster/smf_fit_mpiexec.sh
#   DIFFOPT_MPIEXEC="mpiexec --hostfile hosts" NRANKS=16 bash examples/cluster/smf_fit_mpiexec.sh
#
# diffopt gives each rank the GPU of its rank on its node (unless
# CUDA_VISIBLE_DEVICES is set), and turns off JAX's preallocation of GPU
# memory when more ranks than GPUs share a node.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The environment setup made (skipped where `python` is already the right one).
if [ -f "${VENV:-.venv}/bin/activate" ]; then source "${VENV:-.venv}/bin/activate"; fi
read -r -a MPIEXEC <<< "${DIFFOPT_MPIEXEC:-mpiexec}"
"${MPIEXEC[@]}" -n "${NRANKS:-2}" python examples/cluster/smf_fit.py "${NUM_HALOS:-1e8}"
