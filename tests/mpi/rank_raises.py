"""Under mpiexec -n 3: rank 1 raises part-way through a multi-rank operation.

Usage: rank_raises.py NRANKS OPERATION STAMP_FILE, with OPERATION one of

- sumstats, loss_and_grad, run_adam, run_bfgs: the user's model raises at its
  second evaluation on rank 1 (inside compiled code for all but sumstats);
- pso: the user's loss raises at its second call on rank 1;
- pretrainer: diffopt itself raises on rank 1, whose second call of
  ``KPretrainer.from_training_data`` gets data with a NaN row, while the
  other ranks go on into the pretraining's collectives.

Just before it raises, the raising rank writes the time (``time.time()``) to
STAMP_FILE, so the test can time how long the job takes to end after the
raise. A file, not stdout: ``mpiexec`` may drop a rank's last output lines
when it tears the job down.
"""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from diffopt import kdescent, multigrad, multiswarm

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
operation, stamp_file = sys.argv[2], sys.argv[3]
rank = comm.rank
calls = 0


def stamp_the_raise():
    with open(stamp_file, "w") as f:
        f.write(repr(time.time()))


def user_code(x):
    global calls
    calls += 1
    if rank == 1 and calls == 2:
        stamp_the_raise()
        raise RuntimeError("boom from the user's model")
    return x


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        # The callback runs the user's code at every evaluation, compiled or not;
        # it sits off the differentiated path.
        shape = jax.ShapeDtypeStruct(params.shape, params.dtype)
        echo = jax.pure_callback(user_code, shape, jax.lax.stop_gradient(params))
        return (params + 0 * echo) * self.aux_data

    def calc_loss_from_sumstats(self, sumstats):
        return jnp.sum((sumstats - 1.0) ** 2)


model = Model(aux_data=jnp.float32(rank + 1))
guess = jnp.array([0.5, 2.0])
if operation == "sumstats":
    for _ in range(3):
        model.calc_sumstats_from_params(guess)
elif operation == "loss_and_grad":
    for _ in range(3):
        jax.block_until_ready(model.calc_loss_and_grad_from_params(guess))
elif operation == "run_adam":
    model.run_adam(guess, nsteps=5, progress=False)
elif operation == "run_bfgs":
    model.run_bfgs(guess, maxsteps=5, progress=False)
elif operation == "pso":
    swarm = multiswarm.ParticleSwarm(nparticles=6, ndim=2, xlow=-1, xhigh=1)
    swarm.run_pso(lambda x: float(np.sum(user_code(x) ** 2)), nsteps=3, progress=False, vectorize=False)
elif operation == "pretrainer":
    data = np.random.default_rng(0).normal(size=(200, 2))
    for call in (1, 2):
        if rank == 1 and call == 2:
            data[5, 0] = np.nan
            stamp_the_raise()
        kdescent.KPretrainer.from_training_data(data, num_pretrain_kernels=100, comm=MPI.COMM_WORLD)
else:
    raise SystemExit(f"unknown operation {operation!r}")
print(f"unreachable: rank {rank} finished {operation}", flush=True)
