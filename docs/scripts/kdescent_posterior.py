"""NUTS on the kdescent quickstart's 20-parameter model, its model sample split over the ranks.

    mpiexec -n 2 python docs/scripts/kdescent_posterior.py

The model, the training data, the three mass bins and their KCalcs are the
tutorial's own code cells (examples/kdescent_advanced.py), run as they are.
Each rank draws its share of a 4,000-galaxy model sample (the tutorial's fit
uses 20,000); the kernel counts and ECF values are summed over the ranks
inside the log-likelihood. That is
``-chi2 / 2`` of the density-normalised counts and ECFs of each mass bin
(``reduced_chisq_loss(..., density=True)`` times its number of terms) and of
the number of galaxies in the top bin. The random numbers (the model sample's
and the kernels drawn) are held fixed, so the log-density is deterministic.
Rank 0 saves the draws to kdescent_posterior.npz.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

import diffopt
from diffopt import sample

comm = MPI.COMM_WORLD
EXAMPLE = Path(__file__).parents[2] / "examples" / "kdescent_advanced.py"


def tutorial_cells(*names):
    """The code of the tutorial's cells ``names``, as the quickstart page shows them."""
    text = EXAMPLE.read_text()
    return "\n".join(re.search(rf"--8<-- \[start:{name}\]\n(.*?)# --8<-- \[end:{name}\]", text, re.S).group(1)
                     for name in names)


tutorial = {}
exec(tutorial_cells("cell1", "cell8", "cell9", "cell10", "cell11", "cell13"), tutorial)
kcalcs = [tutorial["kcalc_lowmass"], tutorial["kcalc_midmass"], tutorial["kcalc_highmass"]]
cuts = [tutorial["lowmass_cut"], tutorial["midmass_cut"], tutorial["highmass_cut"]]
truth_top = float(tutorial["training_w_highmass"].sum())
sample_key = jax.random.fold_in(jax.random.key(7), comm.rank)  # this rank's share of the model sample
kernel_key = jax.random.key(8)  # the kernels compared: the same on every rank
# A model sample of 4,000 galaxies (the tutorial fits 20,000): a fifth of the cost per evaluation.
per_rank = 4_000 // comm.size
volume_scale = tutorial["model_nsample"] / (per_rank * comm.size)


def loglike(params):
    params = diffopt.replicate(params)
    x, w = tutorial["generate_model"](params, sample_key, nsample=per_rank)
    chi2 = 0.0
    for kcalc, cut, key in zip(kcalcs, cuts, jax.random.split(kernel_key, 3)):
        weights = tutorial["soft_tophat"](x[:, 2], *cut) * w
        nterms = kcalc.num_eval_kernels + 2 * kcalc.num_eval_fourier_positions
        chi2 = chi2 + nterms * kcalc.reduced_chisq_loss(key, x[:, :2], weights, density=True, comm=comm)
    top = volume_scale * diffopt.sum_over_ranks(jnp.sum(tutorial["soft_tophat"](x[:, 2], *cuts[2]) * w))
    chi2 = chi2 + (top - truth_top) ** 2 / truth_top
    return -0.5 * chi2


truth, bounds = tutorial["truth"], tutorial["bounds"]
posterior = sample.nuts(loglike, truth, nsamples=30, nwarmup=30, param_bounds=bounds,
                        max_num_doublings=4, randkey=0, progress=False)
draws = np.asarray(posterior.samples)
assert len(set(comm.allgather(draws.tobytes()))) == 1, "the chains differ between ranks"
if comm.rank == 0:
    print(f"{comm.size} ranks: identical chains; acceptance {float(posterior.info.acceptance_rate[0]):.2f}, "
          f"{int(posterior.info.divergences[0])} divergences, "
          f"{float(posterior.info.num_integration_steps[0]):.0f} leapfrog steps per draw")
    np.savez("kdescent_posterior.npz", samples=draws[0], truth=np.asarray(truth),
             logdensity=np.asarray(posterior.logdensity[0]), ess=np.asarray(posterior.info.ess))
