"""Two surveys of the same line, each held by its own group of ranks, fitted together.

    mpiexec -n 3 python docs/scripts/group_fit.py

The ranks split into two groups (of 2 ranks and 1 rank, on 3 ranks). Each
group holds one survey, shared out among its ranks, in a LineFit model on the
group's sub-communicator; OnePointGroup adds the two chi-squares. Every rank
checks the group's loss, gradient and fit against one process holding both
surveys.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402
from line_model import LineFit, survey  # noqa: E402

surveys = [survey(num_points=150, noise=0.5, seed=1), survey(num_points=60, noise=0.2, seed=2)]

subcomm, num_groups, group = multigrad.split_subcomms(num_groups=2)
x, y, sigma = (np.array_split(column, subcomm.size)[subcomm.rank] for column in surveys[group])
model = LineFit(aux_data=(jnp.asarray(x), jnp.asarray(y), jnp.asarray(sigma)), comm=subcomm)
both = multigrad.OnePointGroup(model, main_comm=MPI.COMM_WORLD)

guess = jnp.array([0.0, 1.0])
loss, grad = both.calc_loss_and_grad_from_params(guess)
_, _, fit = both.run_bfgs(guess, progress=False)

# One process holding both surveys: the sum of two LineFit losses.
alone = multigrad.OnePointGroup(
    [LineFit(aux_data=tuple(map(jnp.asarray, s)), comm=MPI.COMM_SELF) for s in surveys],
    main_comm=MPI.COMM_SELF)
expected_loss, expected_grad = alone.calc_loss_and_grad_from_params(guess)
_, _, expected_fit = alone.run_bfgs(guess, progress=False)
np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
np.testing.assert_allclose(grad, expected_grad, rtol=1e-12)
np.testing.assert_allclose(fit.x, expected_fit.x, rtol=1e-10)

if MPI.COMM_WORLD.rank == 0:
    print(f"{num_groups} surveys on {MPI.COMM_WORLD.size} ranks: loss {loss:.10f} "
          f"(one process: {expected_loss:.10f}); best fit a, b = {fit.x}")
