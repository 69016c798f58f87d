"""Speed of ParticleSwarm.run_pso against a per-particle Python PSO loop.

Both minimise the 4-D Ackley function with 100 particles for 100 steps, with
the same update rule and weights. The naive loop is what a PSO written
without vectorisation looks like: NumPy updates one particle at a time and a
call of the jitted loss per particle per step. Each run is a fresh process,
so that its first ``run_pso`` includes tracing and compiling; both ratios
(compiled, and including compilation) are measured within each run, on one
rank, and the median and spread (min, max) of ``--runs`` runs are printed:

    python benchmarks/bench_multiswarm.py [--runs 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from diffopt import multiswarm

sys.path.insert(0, str(Path(__file__).parent))
from _runs import summary  # noqa: E402

NPARTICLES, NDIM, NSTEPS = 100, 4, 100
XLOW, XHIGH = -5.0, 5.0


def ackley(x):
    a = 20 * jnp.exp(-0.2 * jnp.sqrt(0.5 * jnp.sum(x**2, axis=0)))
    b = jnp.exp(0.5 * jnp.sum(jnp.cos(2 * jnp.pi * x), axis=0))
    return 20 + jnp.e - a - b


def naive_pso(lossfunc, swarm, seed=0):
    """Textbook PSO, one particle at a time, with the rule and weights of ``swarm``."""
    w, c, s = swarm.inertial_weight, swarm.cognitive_weight, swarm.social_weight
    rng = np.random.default_rng(seed)
    xlow, xhigh = np.full(NDIM, XLOW), np.full(NDIM, XHIGH)
    vmax = swarm.vmax_frac * (xhigh - xlow)
    x, v = swarm.x_init.copy(), swarm.v_init.copy()
    best_x = x.copy()
    best_loss = np.array([float(lossfunc(xi)) for xi in x])
    loss_history = [best_loss.copy()]
    for _ in range(1, NSTEPS):
        swarm_best = best_x[np.argmin(best_loss)].copy()
        losses = np.empty(NPARTICLES)
        for i in range(NPARTICLES):
            u_cognitive, u_social = rng.uniform(size=(2, NDIM))
            vi = w * v[i] + c * u_cognitive * (best_x[i] - x[i]) + s * u_social * (swarm_best - x[i])
            vi = np.clip(vi, -vmax, vmax)
            xi = x[i] + vi
            below, above = xi < xlow, xi > xhigh
            xi = np.where(below, 2 * xlow - xi, xi)
            xi = np.where(above, 2 * xhigh - xi, xi)
            vi = np.where(below | above, -vi, vi)
            x[i], v[i] = np.clip(xi, xlow, xhigh), vi
            losses[i] = float(lossfunc(x[i]))
            if losses[i] < best_loss[i]:
                best_loss[i], best_x[i] = losses[i], x[i]
        loss_history.append(losses)
    return np.array(loss_history)


def timed(fn, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def one_run(repeats):
    """Times of one run, in this fresh process, as JSON on the last line."""
    minimum = float(ackley(jnp.zeros(NDIM)))
    swarm = multiswarm.ParticleSwarm(NPARTICLES, NDIM, XLOW, XHIGH, seed=0)

    def ours():
        return swarm.run_pso(ackley, nsteps=NSTEPS, progress=False, keep_init_random_state=True)

    # First call in this process: traces and compiles the update and the loss.
    cold, results = timed(ours)
    warm, results = timed(ours, repeats)
    ours_best, _ = multiswarm.get_best_loss_and_params(
        results["swarm_loss_history"], results["swarm_x_history"]
    )

    jitted_ackley = jax.jit(ackley)
    jitted_ackley(jnp.zeros(NDIM)).block_until_ready()  # compile outside the timing
    naive, naive_losses = timed(
        lambda: naive_pso(jitted_ackley, swarm), max(1, repeats // 2)
    )
    naive_best = float(np.min(naive_losses))

    assert ours_best - minimum < 0.01 and naive_best - minimum < 0.01, (ours_best, naive_best, minimum)
    print(json.dumps({"cold": cold, "warm": warm, "naive": naive}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs, each in a fresh process")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats within a run (best is kept)")
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        one_run(args.repeats)
        return

    print(f"4-D Ackley, {NPARTICLES} particles x {NSTEPS} steps, 1 rank, jax {jax.__version__}")
    times = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--one-run", "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True).stdout
        t = json.loads(out.strip().splitlines()[-1])
        times.append(t)
        print(f"  run_pso {t['warm'] * 1e3:7.1f} ms compiled, {t['cold'] * 1e3:7.1f} ms including compile; "
              f"naive loop {t['naive'] * 1e3:7.1f} ms")
    print(f"FIGURE speed-up, compiled: {summary([t['naive'] / t['warm'] for t in times], '{:.1f}')}   "
          "(target >= 10)")
    print(f"FIGURE speed-up, including compile: {summary([t['naive'] / t['cold'] for t in times], '{:.1f}')}")


if __name__ == "__main__":
    main()
