"""The seed stellar-mass-function fit at cluster scale: 1e8 halos shared by all ranks.

    srun python examples/cluster/smf_fit.py 1e8        # in smf_fit.sbatch
    mpiexec -n 8 python examples/cluster/smf_fit.py 1e8

The model, the loss and the BFGS fit are those of examples/smf_grad_descent.py
(the multigrad quickstart). What changes at scale is loading the halos: each
rank makes only its own share, the same masses that the seed's
``load_halo_masses(num_halos)`` would give it after making all of them, so no
rank ever holds the whole list. Rank 0 prints the MPI library, where each
rank runs (node and JAX device), the time per loss-and-gradient evaluation
and the fit.
"""

import os
import runpy
import socket
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from diffopt import multigrad

seed = runpy.run_path(str(Path(__file__).parents[1] / "smf_grad_descent.py"), run_name="seed")


def halo_masses_of_rank(num_halos: int, rank: int, size: int) -> np.ndarray:
    """Rank ``rank`` of ``size``'s part of the seed's halo masses, made without the others.

    The seed spaces the quantiles evenly from 0 to 0.9 over all halos and gives
    rank r the r-th block of ``np.array_split``; this makes only that block.
    """
    base, extra = divmod(num_halos, size)
    start = rank * base + min(rank, extra)
    stop = start + base + (rank < extra)
    quantile = 0.9 * np.arange(start, stop, dtype=np.float64) / max(num_halos - 1, 1)
    return 1e10 / (1 - quantile)


def main(num_halos: int) -> None:
    comm = MPI.COMM_WORLD
    volume, smf_bin_edges = 1.0, jnp.linspace(9, 10, 11)
    true_params = jnp.array([-2.0, -0.5])
    log_halo_masses = jnp.asarray(np.log10(halo_masses_of_rank(num_halos, comm.rank, comm.size)), dtype=jnp.float32)
    where = comm.gather((socket.gethostname(), str(jax.devices()[0]),
                         os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), log_halo_masses.size))
    _, num_nodes, _ = multigrad.split_subcomms_by_node(comm)

    true_smf = multigrad.reduce_sum(seed["calc_smf"](true_params, smf_bin_edges, volume, log_halo_masses))
    model = seed["MySMFModel"](aux_data=dict(
        log_halo_masses=log_halo_masses, smf_bin_edges=smf_bin_edges, volume=volume,
        target_sumstats=true_smf,
    ))
    init_params = true_params + jnp.array([-1.5, 0.7])

    step = jax.jit(model.calc_loss_and_grad_from_params)
    jax.block_until_ready(step(init_params))  # compile
    comm.Barrier()
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        jax.block_until_ready(step(init_params))
    per_call = (time.perf_counter() - start) / repeats

    start = time.perf_counter()
    _, _, results = model.run_bfgs(init_params)
    fit_seconds = time.perf_counter() - start

    if comm.rank == 0:
        print("MPI library:", MPI.Get_library_version().replace("\0", "").splitlines()[0].strip())
        print(f"{comm.size} rank(s) on {num_nodes} node(s), {num_halos:,} halos in all")
        for rank, (host, device, visible, count) in enumerate(where):
            print(f"  rank {rank}: {host}, JAX device {device} (CUDA_VISIBLE_DEVICES={visible}), {count:,} halos")
        print(f"loss and gradient over all halos: {per_call * 1e3:.2f} ms per call")
        print(f"BFGS: {results.nit} iterations, {results.nfev} evaluations, {fit_seconds:.2f} s")
        print("BFGS has converged:", results.success)
        print("True params =", true_params)
        print("Converged params =", results.x)


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 100_000_000)
