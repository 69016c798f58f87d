"""Minimise the 4-D Ackley function with a particle swarm, and plot the progress.

    python examples/pso_ackley.py [plot.png]
    mpiexec -n 3 python examples/pso_ackley.py [plot.png]

The Ackley function has about 10**ndim local minima in the box, so gradient
descent from a random start almost never finds the global one at the origin.
On several ranks the particles are shared out among them; the result is the
same as on one rank.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp
import numpy as np

from diffopt import _comm, multiswarm

NDIM = 4


def ackley(x):
    a = 20 * jnp.exp(-0.2 * jnp.sqrt(0.5 * jnp.sum(x**2, axis=0)))
    b = jnp.exp(0.5 * jnp.sum(jnp.cos(2 * jnp.pi * x), axis=0))
    return 20 + jnp.e - a - b


def plot_progress(loss_history: np.ndarray, global_minimum: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_so_far = np.minimum.accumulate(np.nanmin(loss_history, axis=1))
    steps = np.arange(len(best_so_far))
    fig, (ax_loss, ax_gap) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")

    ax_loss.plot(steps, best_so_far, label="swarm best loss so far")
    ax_loss.plot(steps, np.nanmedian(loss_history, axis=1), alpha=0.6, label="median particle loss")
    ax_loss.axhline(global_minimum, color="k", ls="--", lw=1, label="global minimum")
    ax_loss.set_xlabel("PSO step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()

    # Floor at 1e-12 so that reaching the minimum exactly stays on a log axis.
    ax_gap.plot(steps, np.maximum(best_so_far - global_minimum, 1e-12), label="swarm best − minimum")
    ax_gap.axhline(0.01, color="k", ls=":", lw=1, label="0.01 tolerance")
    ax_gap.set_yscale("log")
    ax_gap.set_xlabel("PSO step")
    ax_gap.set_ylabel("best loss so far − global minimum")
    ax_gap.legend()
    fig.suptitle(f"Particle swarm on the {NDIM}-D Ackley function ({loss_history.shape[1]} particles)")
    fig.savefig(path, dpi=120)


def main(plot_path: str = "pso_ackley.png") -> None:
    swarm = multiswarm.ParticleSwarm(nparticles=100, ndim=NDIM, xlow=-5, xhigh=5, seed=0)
    results = swarm.run_pso(ackley, nsteps=100)
    best_loss, best_params = multiswarm.get_best_loss_and_params(
        results["swarm_loss_history"], results["swarm_x_history"]
    )
    if _comm.rank() == 0:
        global_minimum = float(ackley(jnp.zeros(NDIM)))
        print(f"ranks: {_comm.size()}, run time {results['runtime']:.3f} s")
        print(f"best loss {best_loss:.6f} (global minimum {global_minimum:.6f} at the origin)")
        print(f"at params {np.array2string(best_params, precision=6)}")
        plot_progress(results["swarm_loss_history"], global_minimum, plot_path)
        print(f"plot written to {plot_path}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
