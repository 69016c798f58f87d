"""On a GPU machine, under mpiexec: the GPU each rank got from diffopt, and its memory policy.

    mpiexec -n 2 python tests/gpu/rank_gpus.py 2

Run without CUDA_VISIBLE_DEVICES and XLA_PYTHON_CLIENT_PREALLOCATE set: on a
node with fewer GPUs than ranks, diffopt must give rank k GPU k mod n and turn
JAX's preallocation off. Rank 0 prints one line per rank and asserts.
"""

import os
import socket
import sys

import diffopt  # noqa: F401  (maps ranks to GPUs when imported)
import jax
import jax.numpy as jnp
from mpi4py import MPI

from diffopt import _gpus

comm = MPI.COMM_WORLD
x = jnp.ones((2048, 2048))
(x @ x).block_until_ready()
stats = jax.devices()[0].memory_stats() or {}
row = dict(
    rank=comm.rank, host=socket.gethostname(), gpus=_gpus.count_gpus(),
    option=jax.config._read("jax_cuda_visible_devices"),
    preallocate=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
    devices=[str(d) for d in jax.devices()],
    reserved_mb=round(stats.get("bytes_reserved", stats.get("pool_bytes", 0)) / 2**20),
    limit_mb=round(stats.get("bytes_limit", 0) / 2**20),
)
rows = comm.gather(row)
if comm.rank == 0:
    print("MPI library:", MPI.Get_library_version().replace("\0", "").splitlines()[0].strip())
    for r in rows:
        print("RANK", r)
    assert comm.size == int(sys.argv[1]), f"ran {comm.size} ranks, expected {sys.argv[1]}"
    gpus = rows[0]["gpus"]
    assert gpus >= 1 and all(r["devices"][0].startswith("cuda") for r in rows), rows
    assert all(r["option"] == str(r["rank"] % gpus) and len(r["devices"]) == 1 for r in rows), rows
    if comm.size > gpus:
        assert all(r["preallocate"] == "false" for r in rows), rows
    print(f"rank gpus: OK on {comm.size} ranks sharing {gpus} GPU(s)")
