"""The posterior of the stellar-mass-function model with NUTS, its halos split over the ranks.

    mpiexec -n 3 python docs/scripts/smf_posterior.py

The quickstart's model (examples/smf_grad_descent.py) with a Gaussian
likelihood: the "measured" stellar mass function is the model's at the
truth with 5% noise, and 5% errors. BFGS finds the best fit; the exact
Fisher matrix there (``jax.hessian`` of -ln L) gives the Gaussian
approximation of the posterior; ``run_nuts`` samples the posterior itself
(flat prior), two chains side by side. Every rank checks that it holds the
same chains as every other rank, and rank 0 saves the draws, the best fit and
the Fisher matrix to smf_posterior.npz.
"""

import runpy
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402

comm = MPI.COMM_WORLD
# The quickstart's functions: load_halo_masses, calc_smf and MySMFModel.
smf = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "smf_grad_descent.py"))


class SMFLikelihood(smf["MySMFModel"]):
    """-ln L of the measured stellar mass function, 5% Gaussian errors (up to a constant)."""

    def calc_loss_from_sumstats(self, sumstats):
        measured = self.aux_data["target_sumstats"]
        return 0.5 * jnp.sum(((sumstats - measured) / (0.05 * measured)) ** 2)


truth = jnp.array([-2.0, -0.5])
edges = jnp.linspace(9, 10, 11)
log_halo_masses = jnp.log10(smf["load_halo_masses"](10_000))  # this rank's share
true_smf = multigrad.reduce_sum(smf["calc_smf"](truth, edges, 1.0, log_halo_masses))
measured = true_smf * (1 + 0.05 * np.random.default_rng(1).normal(size=true_smf.shape))
model = SMFLikelihood(aux_data=dict(log_halo_masses=log_halo_masses, smf_bin_edges=edges, volume=1.0,
                                    target_sumstats=jnp.asarray(measured)))

# The best fit, and the Gaussian approximation there: the inverse Fisher matrix.
_, _, fit = model.run_bfgs(truth + jnp.array([0.3, 0.2]), progress=False)
best = jnp.asarray(fit.x)
fisher = jax.hessian(model.calc_loss_from_params)(best)

# The posterior itself: NUTS, two chains, the loss's exact gradient summed over the ranks.
# The two parameters are strongly correlated: a dense mass matrix takes that out.
posterior = model.run_nuts(best, nsamples=800, nwarmup=200, nchains=2, randkey=0, dense_mass_matrix=True,
                           progress=False)

# Every rank holds the very same chains.
chains = np.asarray(posterior.samples)
assert len(set(comm.allgather(chains.tobytes()))) == 1, "the chains differ between ranks"
if comm.rank == 0:
    print(f"{comm.size} rank(s): identical chains on every rank")
    print("best fit:", np.asarray(best), " split R-hat:", np.asarray(posterior.info.rhat),
          " ESS:", np.asarray(posterior.info.ess).round())
    np.savez("smf_posterior.npz", samples=chains, logdensity=np.asarray(posterior.logdensity),
             best=np.asarray(best), truth=np.asarray(truth), fisher=np.asarray(fisher),
             rhat=np.asarray(posterior.info.rhat), ess=np.asarray(posterior.info.ess),
             acceptance=np.asarray(posterior.info.acceptance_rate),
             divergences=np.asarray(posterior.info.divergences))
