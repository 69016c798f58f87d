"""The line fit with its points split unevenly over the ranks; with 3 ranks or more, the last holds none.

    mpiexec -n 3 python docs/scripts/uneven_split.py

Every rank checks that the loss, gradient, Hessian and BFGS fit equal those
of one process holding all the points, and exits non-zero if not. Rank 0
saves them, with the points and their split, to uneven_split_<number of ranks>.npz.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from line_model import LineFit, survey  # noqa: E402

comm = MPI.COMM_WORLD
x, y, sigma = survey(num_points=200, noise=0.5, seed=0)  # the same on every rank

# Rank r holds a share of the points proportional to r + 1, except that with
# three ranks or more the last one holds none at all.
share = np.arange(1.0, comm.size + 1)
if comm.size >= 3:
    share[-1] = 0.0
ends = np.round(np.cumsum(share) / share.sum() * x.size).astype(int)
mine = slice(ends[comm.rank - 1] if comm.rank else 0, ends[comm.rank])
model = LineFit(aux_data=(jnp.asarray(x[mine]), jnp.asarray(y[mine]), jnp.asarray(sigma[mine])))


def results(model):
    params = jnp.array([0.0, 1.0])
    loss, grad = model.calc_loss_and_grad_from_params(params)
    hessian = jax.hessian(model.calc_loss_from_params)(params)
    _, _, fit = model.run_bfgs(params, progress=False)
    return dict(loss=loss, grad=grad, hessian=hessian, fit=fit.x, fit_loss=model.calc_loss_from_params(fit.x))


split = results(model)
# One process holding every point: the same model on MPI.COMM_SELF.
alone = results(LineFit(aux_data=(jnp.asarray(x), jnp.asarray(y), jnp.asarray(sigma)), comm=MPI.COMM_SELF))
for name in split:
    np.testing.assert_allclose(split[name], alone[name], rtol=1e-12, atol=1e-12, err_msg=name)

counts = comm.gather(x[mine].size)
if comm.rank == 0:
    print(f"{comm.size} rank(s) holding {counts} points: loss {split['loss']:.12f}, "
          f"best fit a, b = {split['fit']}, as in one process")
    np.savez(f"uneven_split_{comm.size}.npz", counts=counts, x=x, y=y, sigma=sigma, **split)
