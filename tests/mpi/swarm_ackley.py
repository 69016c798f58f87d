"""Ackley 4-D PSO on several ranks: converges, and histories agree on every rank.

Usage: mpiexec -n N python swarm_ackley.py N OUT.npz
Rank 0 saves the histories to OUT.npz so the launching test can compare them
with a single-process run of the same seed.
"""

import hashlib
import io
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffopt import _comm, multiswarm  # noqa: E402


def ackley(x):
    a = 20 * jnp.exp(-0.2 * jnp.sqrt(0.5 * jnp.sum(x**2, axis=0)))
    b = jnp.exp(0.5 * jnp.sum(jnp.cos(2 * jnp.pi * x), axis=0))
    return 20 + jnp.e - a - b


def main(expected_ranks, out_path):
    rank, nranks = _comm.rank(), _comm.size()
    assert nranks == expected_ranks, f"expected {expected_ranks} ranks, running on {nranks}"
    assert nranks > 1, "run this under mpiexec with several ranks"
    swarm = multiswarm.ParticleSwarm(nparticles=100, ndim=4, xlow=-5, xhigh=5, seed=0)
    assert swarm.subcomm.size == 1
    sizes = _comm.allgather(len(swarm.particles_on_this_rank))
    assert sum(sizes) == 100 and max(sizes) - min(sizes) <= 1, sizes

    # The progress bar is drawn on rank 0 only.
    captured = io.StringIO()
    stderr, sys.stderr = sys.stderr, captured
    try:
        results = swarm.run_pso(ackley, nsteps=100, progress=True)
    finally:
        sys.stderr = stderr
    assert (rank == 0) == ("PSO" in captured.getvalue()), (rank, captured.getvalue()[:200])

    names = ("swarm_x_history", "swarm_v_history", "swarm_loss_history")
    assert results["swarm_x_history"].shape == (100, 100, 4)
    assert results["swarm_loss_history"].shape == (100, 100)
    digest = hashlib.sha256(b"".join(results[n].tobytes() for n in names)).hexdigest()
    digests = _comm.allgather(digest)
    assert len(set(digests)) == 1, f"histories differ across ranks: {digests}"

    best_loss, best_params = multiswarm.get_best_loss_and_params(
        results["swarm_loss_history"], results["swarm_x_history"]
    )
    global_min = float(ackley(jnp.zeros(4)))
    assert best_loss - global_min < 0.01, (best_loss, global_min)
    if rank == 0:
        np.savez(out_path, **{n: results[n] for n in names})
        print(f"{nranks} ranks: best loss {best_loss:.6f} (minimum {global_min:.6f})")

    check_checkpoint_resume(out_path + ".ckpt", results)


def check_checkpoint_resume(path, uninterrupted):
    """Rank 0 writes the checkpoint and shares it when resuming; all ranks agree."""
    evaluated = []  # one entry per particle this rank evaluates

    def counted_ackley(x):
        # Under jax.vmap the callback runs once per particle (once per batch
        # if it took no batched argument).
        jax.debug.callback(lambda position: evaluated.append(1), x)
        return ackley(x)

    def evaluations():
        return sum(_comm.allgather(len(evaluated)))

    swarm = multiswarm.ParticleSwarm(nparticles=100, ndim=4, xlow=-5, xhigh=5, seed=0)
    swarm.run_pso(counted_ackley, nsteps=5, progress=False, checkpoint=path, checkpoint_every=2)
    assert evaluations() == 5 * 100, evaluations()
    evaluated.clear()
    resumed = swarm.run_pso(counted_ackley, nsteps=8, progress=False, checkpoint=path)
    # It went on from step 5: only the 3 steps left were evaluated.
    assert evaluations() == 3 * 100, evaluations()
    for name in ("swarm_x_history", "swarm_v_history", "swarm_loss_history"):
        assert np.array_equal(resumed[name], uninterrupted[name][:8]), name

    other = multiswarm.ParticleSwarm(nparticles=50, ndim=4, xlow=-5, xhigh=5, seed=0)
    try:
        other.run_pso(ackley, nsteps=8, progress=False, checkpoint=path)
    except ValueError as err:
        assert "another problem" in str(err), err
    else:
        raise AssertionError("a checkpoint of another problem was resumed")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
