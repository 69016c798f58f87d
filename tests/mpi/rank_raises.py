"""Under mpiexec -n 3: rank 1 raises at its second sumstats call during run_adam."""

import jax.numpy as jnp
import jax
from mpi4py import MPI

from diffopt import multigrad

calls = {"n": 0}


def count(x):
    calls["n"] += 1
    if MPI.COMM_WORLD.rank == 1 and calls["n"] == 2:
        raise RuntimeError("boom from the user's model")
    return x


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        return jax.pure_callback(count, jax.ShapeDtypeStruct(params.shape, params.dtype), params)

    def calc_loss_from_sumstats(self, sumstats):
        return jnp.sum(sumstats**2)


model = Model()
for _ in range(3):
    model.calc_loss_from_params(jnp.ones(2))
print("unreachable on every rank", flush=True)
