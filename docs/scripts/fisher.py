"""The Fisher matrix of the stellar-mass-function fit, exact, on however many ranks run this.

    mpiexec -n 3 python docs/scripts/fisher.py

The quickstart's model (examples/smf_grad_descent.py), with the halos shared
out among the ranks and a Gaussian likelihood: the measured stellar mass
function has 5% errors. Every rank checks that ``jax.hessian`` of the
negative log-likelihood at the truth equals the same Hessian in one process
holding all the halos, ``J^T C^-1 J``, and central finite differences of
the loss with a step of 1e-6, and exits non-zero if not. Rank 0 saves them, and the loss on a grid of
parameters around the truth, to fisher_<number of ranks>.npz.
"""

import runpy
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402

# The quickstart's functions: load_halo_masses, calc_smf and MySMFModel.
smf = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "smf_grad_descent.py"))


class SMFLikelihood(smf["MySMFModel"]):
    """-ln L of the stellar mass function, with Gaussian errors of 5% (up to a constant)."""

    def calc_loss_from_sumstats(self, sumstats):
        target = self.aux_data["target_sumstats"]
        return 0.5 * jnp.sum(((sumstats - target) / (0.05 * target)) ** 2)


def likelihood_model(log_halo_masses, comm=None):
    aux_data = dict(log_halo_masses=log_halo_masses, smf_bin_edges=jnp.linspace(9, 10, 11), volume=1.0)
    target = multigrad.reduce_sum(smf["calc_smf"](truth, aux_data["smf_bin_edges"], 1.0, log_halo_masses),
                                  comm=comm)
    return SMFLikelihood(aux_data=dict(aux_data, target_sumstats=target), comm=comm)


truth = jnp.array([-2.0, -0.5])
model = likelihood_model(jnp.log10(smf["load_halo_masses"](10_000)))  # this rank's share of the halos

# The Fisher matrix: the Hessian of -ln L at the truth, in one line.
fisher = jax.hessian(model.calc_loss_from_params)(truth)

# Check 1: one process holding all the halos (the same model on MPI.COMM_SELF).
all_halos = jnp.log10(smf["load_halo_masses"](10_000, comm=MPI.COMM_SELF))
fisher_one_process = jax.hessian(likelihood_model(all_halos, MPI.COMM_SELF).calc_loss_from_params)(truth)

# Check 2: J^T C^-1 J, with J the Jacobian of the summed statistics and C their
# covariance: the Fisher matrix of a Gaussian likelihood. Here it equals the
# Hessian, because the residuals vanish at the truth.
jacobian = jax.jacfwd(model.calc_sumstats_from_params)(truth)
sigma_smf = 0.05 * model.aux_data["target_sumstats"]
gauss_newton = jacobian.T @ (jacobian / sigma_smf[:, None] ** 2)

# Check 3: central finite differences of the loss itself, no derivative taken
# by JAX, for a range of steps h.
loss = jax.jit(model.calc_loss_from_params)


def finite_difference_hessian(h):
    e = h * np.eye(2)
    return np.array([[(loss(truth + e[i] + e[j]) - loss(truth + e[i] - e[j])
                       - loss(truth - e[i] + e[j]) + loss(truth - e[i] - e[j])) / (4 * h**2)
                      for j in range(2)] for i in range(2)])


def relative_difference(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


steps = np.logspace(-8, -3, 11)
finite_diff_errors = [relative_difference(finite_difference_hessian(h), fisher) for h in steps]
finite_diff = finite_difference_hessian(1e-6)
differences = {
    "one process": relative_difference(fisher, fisher_one_process),
    "J^T C^-1 J": relative_difference(fisher, gauss_newton),
    "finite differences": relative_difference(fisher, finite_diff),
}
assert differences["one process"] < 1e-13, differences
assert differences["J^T C^-1 J"] < 1e-13, differences
assert differences["finite differences"] < 1e-7, differences

# The exact -ln L on a grid around the truth, for the confidence contours.
errors = jnp.sqrt(jnp.diag(jnp.linalg.inv(fisher)))
axes = [truth[i] + jnp.linspace(-3.5, 3.5, 41) * errors[i] for i in range(2)]
grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)
loss_grid = jax.jit(lambda g: jax.lax.map(model.calc_loss_from_params, g.reshape(-1, 2)))(grid)

if MPI.COMM_WORLD.rank == 0:
    print(f"{MPI.COMM_WORLD.size} rank(s): Fisher matrix\n{fisher}")
    for name, difference in differences.items():
        print(f"  max relative difference from {name}: {difference:.1e}")
    np.savez(f"fisher_{MPI.COMM_WORLD.size}.npz", fisher=fisher, finite_diff=finite_diff,
             steps=steps, finite_diff_errors=finite_diff_errors,
             truth=truth, grid=grid, loss_grid=loss_grid.reshape(grid.shape[:2]), **differences)
