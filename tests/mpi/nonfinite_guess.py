"""Under mpiexec: a loss that is not finite at the guess stops every fit on every rank.

Usage: nonfinite_guess.py NRANKS

The last rank's data hold a NaN, so the summed loss is NaN everywhere. Every
fit entry point must raise ``NonFiniteGuessError`` (a ``ValueError``) on
every rank, with the same message, before taking a step; then a fit on clean
data still runs, so no rank was left behind in a collective.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import kdescent, multigrad, multiswarm, optim  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        x = self.aux_data
        return jnp.stack([jnp.sum((x - params[0]) ** 2), jnp.sum(x * params[1])])

    def calc_loss_from_sumstats(self, sumstats):
        return sumstats[0] + sumstats[1] ** 2


data = np.array_split(np.linspace(0.0, 1.0, 12), comm.size)[comm.rank]
if comm.rank == comm.size - 1:
    data = data.copy()
    data[0] = np.nan
model = Model(aux_data=jnp.asarray(data))
guess = jnp.array([0.2, 0.3])


def loss_and_grad(params, randkey):
    return jax.value_and_grad(model.calc_loss_from_params)(params)


def swarm_loss(x):
    return float(model.calc_loss_from_params(jnp.asarray(x)))


fits = {
    "run_simple_grad_descent": lambda: model.run_simple_grad_descent(guess, nsteps=5, progress=False),
    "run_adam": lambda: model.run_adam(guess, nsteps=5, progress=False),
    "run_adam(adamw)": lambda: model.run_adam(guess, nsteps=5, optimizer=optax.adamw(0.1), progress=False),
    "run_bfgs": lambda: model.run_bfgs(guess, maxsteps=5, progress=False),
    "kdescent.adam": lambda: kdescent.adam(model.calc_loss_from_params, guess, nsteps=5, randkey=None,
                                           progress=False),
    "kdescent.bfgs": lambda: kdescent.bfgs(model.calc_loss_from_params, guess, maxsteps=5, progress=False),
    "optim.fit": lambda: optim.fit(loss_and_grad, guess, optax.sgd(0.1), 5, progress=False),
    "run_pso": lambda: multiswarm.ParticleSwarm(4, 2, -1.0, 1.0, ranks_per_particle=comm.size).run_pso(
        swarm_loss, nsteps=3, progress=False, vectorize=False),
}
for name, fit in fits.items():
    try:
        fit()
        message = None
    except optim.NonFiniteGuessError as exc:
        assert isinstance(exc, ValueError)
        message = str(exc)
    everyone = comm.allgather(message)
    assert None not in everyone, f"{name}: ranks {[r for r, m in enumerate(everyone) if m is None]} did not raise"
    assert len(set(everyone)) == 1, f"{name}: ranks raised different messages {everyone}"
    assert "not finite" in message and "nan" in message, message
    if comm.rank == 0:
        print(f"{name}: {message}", flush=True)

clean = Model(aux_data=jnp.asarray(np.nan_to_num(data)))
params, losses = clean.run_adam(guess, nsteps=5, progress=False)
assert params.shape == (6, 2) and np.all(np.isfinite(losses))
if comm.rank == 0:
    print(f"nonfinite guess: OK on {comm.size} ranks", flush=True)
