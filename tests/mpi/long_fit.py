"""Under mpiexec: a slow, stochastic fit that a test kills with SIGKILL and resumes.

Usage: long_fit.py NRANKS KIND OUT.npy [CHECKPOINT]

KIND is ``adam`` (``OnePointModel.run_adam`` with bounds and a random key,
the data split across the ranks) or ``pso`` (``ParticleSwarm.run_pso`` with
a per-particle loss, the particles split across the ranks). Each evaluation
sleeps a little, so that the job can be killed part-way. With CHECKPOINT the
fit saves a checkpoint every 20 steps and resumes from it. Rank 0 saves the
final parameters (the whole history for adam, the swarm positions for pso)
to OUT.npy. Rank 0 prints ``evaluated K`` each time it evaluates the loss
(K counts its own evaluations: one per step for adam, one per particle it
holds for pso) and at the end ``loss evaluations: N``, the evaluations of
the whole job (for adam, of one rank; for pso, of all particles on all
ranks), so that a test can tell a resumed fit from one that started over.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from diffopt import multigrad, multiswarm

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
kind, out = sys.argv[2], sys.argv[3]
checkpoint = sys.argv[4] if len(sys.argv) > 4 else None
evaluations = 0


def slow_evaluation(seconds):
    global evaluations
    evaluations += 1
    if comm.rank == 0:
        print(f"evaluated {evaluations}", flush=True)
    time.sleep(seconds)


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params, randkey):
        x = self.aux_data
        return jnp.stack([jnp.sum(jnp.exp(-(x - params[0]) ** 2 / params[1])), jnp.sum(x * params[0])])

    def calc_loss_from_sumstats(self, sumstats, randkey):
        jax.debug.callback(lambda: slow_evaluation(0.004))
        noise = 0.01 * jax.random.normal(randkey)
        return jnp.sum((sumstats - jnp.array([12.0, 3.0])) ** 2) * (1 + noise)


def slow_ackley(x):
    slow_evaluation(0.002)
    return float(-20 * np.exp(-0.2 * np.sqrt(np.mean(x**2))) - np.exp(np.mean(np.cos(2 * np.pi * x)))
                 + 20 + np.e)


if kind == "adam":
    data = np.array_split(np.linspace(-2, 3, 40), comm.size)[comm.rank]
    result = Model(aux_data=jnp.asarray(data)).run_adam(
        jnp.array([0.3, 1.0]), nsteps=400, learning_rate=0.02, randkey=7,
        param_bounds=[None, (0.1, 5.0)], progress=False, checkpoint=checkpoint, checkpoint_every=20)[0]
elif kind == "pso":
    swarm = multiswarm.ParticleSwarm(nparticles=12, ndim=3, xlow=-5, xhigh=5, seed=3)
    result = swarm.run_pso(slow_ackley, nsteps=300, progress=False, vectorize=False,
                           checkpoint=checkpoint, checkpoint_every=20)["swarm_x_history"]
else:
    raise SystemExit(f"unknown kind {kind!r}")
if kind == "pso":
    evaluations = comm.allreduce(evaluations)
if comm.rank == 0:
    np.save(out, np.asarray(result))
    print(f"loss evaluations: {evaluations}", flush=True)
