"""Under mpiexec: run_adam (bounded, stochastic), run_bfgs and optax.lbfgs on split data.

Usage: multigrad_fits.py NRANKS OUT.npz

Rank 0 saves the results to OUT.npz; the pytest test compares 1 and 3 ranks.
Every rank checks that it holds exactly what the others hold.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import optax
from mpi4py import MPI

from diffopt import multigrad

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params, randkey=None):
        x = self.aux_data
        return jnp.stack([jnp.sum(jnp.exp(-(x - params[0]) ** 2 / params[1])), jnp.sum(x * params[0])])

    def calc_loss_from_sumstats(self, sumstats, randkey=None):
        # The same key on every rank: stochastic, yet identical across ranks.
        noise = 0.0 if randkey is None else 1e-3 * jax.random.normal(randkey)
        return jnp.sum((sumstats - jnp.array([12.0, 3.0])) ** 2) + noise * sumstats[0]


x = np.linspace(-2, 3, 40)
model = Model(aux_data=jnp.asarray(np.array_split(x, comm.size)[comm.rank]))
guess = jnp.array([0.3, 1.0])
out = {
    "adam": model.run_adam(guess, nsteps=100, learning_rate=0.02, randkey=7,
                           param_bounds=[None, (0.1, 5.0)], progress=False)[0],
    "bfgs": model.run_bfgs(guess, maxsteps=50, param_bounds=[None, (0.1, 5.0)], progress=False)[2].x,
    "lbfgs": model.run_adam(guess, nsteps=30, optimizer=optax.lbfgs(), progress=False)[0],
}


@jax.jit
def user_training_loop(model, params):
    # A user's own optax loop: the model is an argument, the loop one lax.scan.
    opt = optax.adam(0.02)

    def step(carry, _):
        params, state = carry
        loss, grad = jax.value_and_grad(model.calc_loss_from_params)(params)
        updates, state = opt.update(grad, state)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=100)
    return params, losses


out["user_scan"] = jnp.concatenate(user_training_loop(model, guess))
for name, value in out.items():
    blobs = comm.allgather(np.asarray(value).tobytes())
    assert len(set(blobs)) == 1, f"{name} differs between ranks"
if comm.rank == 0:
    np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
