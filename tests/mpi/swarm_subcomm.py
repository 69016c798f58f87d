"""PSO with ranks_per_particle: each particle's loss is itself parallel.

Usage: mpiexec -n N python swarm_subcomm.py N OUT.npz RANKS_PER_PARTICLE
Each rank of a group sums the Ackley terms of its share of the dimensions and
the group adds them up over ``swarm.subcomm`` (host side). Rank 0 saves the
histories to OUT.npz for comparison with a single-process run.
"""

import hashlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from diffopt import _comm, multiswarm  # noqa: E402

NDIM = 4


def make_parallel_ackley(subcomm, calls):
    my_dims = np.array_split(np.arange(NDIM), subcomm.size)[subcomm.rank]

    def ackley(x):
        calls.append(np.array(x))
        x = np.asarray(x)[my_dims]
        partial = np.array([np.sum(x**2), np.sum(np.cos(2 * np.pi * x))])
        sum_sq, sum_cos = _comm.reduce_sum(partial, comm=subcomm)
        return 20 + np.e - 20 * np.exp(-0.2 * np.sqrt(0.5 * sum_sq)) - np.exp(0.5 * sum_cos)

    return ackley


def main(expected_ranks, out_path, ranks_per_particle):
    nranks = _comm.size()
    assert nranks == expected_ranks, f"expected {expected_ranks} ranks, running on {nranks}"
    swarm = multiswarm.ParticleSwarm(
        nparticles=20, ndim=NDIM, xlow=-5, xhigh=5, seed=1, ranks_per_particle=ranks_per_particle
    )
    assert swarm.subcomm.size == ranks_per_particle
    assert swarm.num_groups == nranks // ranks_per_particle
    calls = []
    results = swarm.run_pso(make_parallel_ackley(swarm.subcomm, calls), nsteps=15, progress=False)

    # Every rank of a group evaluated the same particles, in the same order.
    calls_digest = hashlib.sha256(np.asarray(calls).tobytes()).hexdigest()
    assert len(set(_comm.allgather(calls_digest, comm=swarm.subcomm))) == 1
    assert len(calls) == 15 * len(swarm.particles_on_this_rank)

    names = ("swarm_x_history", "swarm_v_history", "swarm_loss_history")
    digest = hashlib.sha256(b"".join(results[n].tobytes() for n in names)).hexdigest()
    assert len(set(_comm.allgather(digest))) == 1, "histories differ across ranks"
    if _comm.rank() == 0:
        np.savez(out_path, **{n: results[n] for n in names})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
