"""Under mpiexec (2 or 3 ranks on one node): each rank gets the GPU of its node-local rank.

diffopt's import ran ``map_ranks_to_gpus`` already; with no GPU on this
machine it chose nothing. Here it runs again, before JAX starts, with the
node's GPU count faked to 2: ranks 0, 1, 2 get GPUs 0, 1, 0, and with 3 ranks
on 2 GPUs JAX's preallocation is turned off. JAX then runs on the CPU as usual.
"""

import os
import sys

import jax
from mpi4py import MPI

from diffopt import _comm, _gpus, multigrad

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


def agree(ok: bool, what: str):
    if not comm.allreduce(bool(ok), op=MPI.LAND):
        raise AssertionError(f"{what} (rank {comm.rank}: ok={ok})")


def jax_option() -> str:
    return jax.config._read("jax_cuda_visible_devices")


if _gpus.count_gpus() == 0:
    agree(jax_option() == "all", "with no GPU, importing diffopt chose no GPU")

plan = _comm.map_ranks_to_gpus(num_gpus=2)
agree(plan.device == comm.rank % 2, f"rank {comm.rank} got GPU {plan.device}")
agree(jax_option() == str(comm.rank % 2), f"jax_cuda_visible_devices is {jax_option()}")
sharing = comm.size > 2
agree(plan.environ == ({"XLA_PYTHON_CLIENT_PREALLOCATE": "false"} if sharing else {}),
      f"memory settings {plan.environ}")
agree((os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE") == "false") == sharing, "preallocation setting")
# The choice is made once: a second call keeps it.
agree(_comm.map_ranks_to_gpus(num_gpus=2).device is None, "a second mapping changed the first")
# JAX starts (on the CPU here) and the ranks still sum.
total = multigrad.reduce_sum(jax.numpy.ones(()) * (comm.rank + 1))
agree(total == comm.size * (comm.size + 1) / 2, f"sum over ranks {total}")
if comm.rank == 0:
    print("gpu mapping: OK on", comm.size, "ranks")
