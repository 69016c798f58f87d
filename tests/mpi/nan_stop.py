"""Under mpiexec: fits meet a non-finite gradient and stop on every rank at the same step.

Usage: nan_stop.py NRANKS OUT.npz

The gradient becomes NaN once the first parameter passes 0.5 (the loss stays
finite), with the data split across the ranks. Each fit must warn with the
step number, return the history up to the last finite step, and do so
identically on every rank. Rank 0 saves the histories to OUT.npz; the pytest
test compares 1 and 3 ranks.
"""

import sys
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


@jax.custom_jvp
def fragile(x):
    return x


@fragile.defjvp
def _fragile_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return x, jnp.where(x > 0.5, jnp.nan, 1.0) * t


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        x = self.aux_data
        return jnp.stack([jnp.sum(x) * params[0], jnp.sum(x**2) * params[1], jnp.sum(x), jnp.sum(x**2)])

    def calc_loss_from_sumstats(self, sumstats):
        p0, p1 = sumstats[0] / sumstats[2], sumstats[1] / sumstats[3]
        return (fragile(p0) - 2.0) ** 2 + (p1 - 1.0) ** 2


x = np.linspace(0.1, 1.0, 30)
model = Model(aux_data=jnp.asarray(np.array_split(x, comm.size)[comm.rank]))
guess = jnp.array([0.0, 0.0])
fits = {
    "adam": lambda: model.run_adam(guess, nsteps=100, learning_rate=0.05, progress=False)[0],
    "adamw": lambda: model.run_adam(guess, nsteps=100, optimizer=optax.adamw(0.05), progress=False)[0],
    "grad_descent": lambda: model.run_simple_grad_descent(
        guess, nsteps=100, learning_rate=0.02, progress=False).params,
    "bfgs": lambda: model.run_bfgs(guess, maxsteps=50, progress=False)[0],
}
out = {}
for name, run in fits.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params = np.asarray(run())
    messages = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(messages) == 1, f"{name}: expected one warning, got {messages}"
    step = int(messages[0].split(" at ")[1].split()[1])  # "... at step N" / "at iteration N"
    assert len(params) == step, f"{name}: {len(params)} rows kept, stopped at step {step}"
    assert np.all(np.isfinite(params)) and np.all(params[:, 0] <= 0.5), name
    everyone = comm.allgather((step, params.tobytes()))
    assert len(set(everyone)) == 1, f"{name}: ranks stopped differently: {[s for s, _ in everyone]}"
    out[name] = params
    if comm.rank == 0:
        print(f"{name}: stopped at step {step} on every rank", flush=True)
if comm.rank == 0:
    np.savez(sys.argv[2], **out)
