"""The multigrad quickstart notebook, its cells run unchanged as one script.

Run with MPLBACKEND=Agg to write no windows; the figures are saved by the
last lines (not part of the notebook) into the folder given as argv[1].
"""
# --8<-- [start:cell1]
from mpi4py import MPI
import jax.scipy
from jax import numpy as jnp
import numpy as np
import matplotlib.pyplot as plt

from diffopt import multigrad
# --8<-- [end:cell1]

# --8<-- [start:cell2]
# Generate fake halo masses between 10^10 < M_h < 10^11 as a power law
def load_halo_masses(num_halos=10_000, comm=MPI.COMM_WORLD):
    quantile = jnp.linspace(0, 0.9, num_halos)
    mhalo = 1e10 / (1 - quantile)

    # Assign halos evenly across given MPI ranks (only one rank for now)
    return np.array_split(mhalo, comm.size)[comm.rank]


# Compute one bin of the stellar mass function (SMF)
@jax.jit
def calc_smf_bin(params, logsm_low, logsm_high, volume, log_halo_masses):
    # Unpack model parameters f and sigma
    log_f, log_sigma = params
    mean_logsm = log_f + log_halo_masses
    sigma = 10 ** log_sigma

    # Integrating the log-normal PDF over the bin, we get erf:
    erf_high = 0.5 * (1 + jax.scipy.special.erf(
        (logsm_high - mean_logsm)/(jnp.sqrt(2) * sigma)))
    erf_low = 0.5 * (1 + jax.scipy.special.erf(
        (logsm_low - mean_logsm)/(jnp.sqrt(2) * sigma)))
    prob_in_bin = erf_high - erf_low

    # Sum probabilities, convert to number density, divide by bin width
    return jnp.sum(prob_in_bin) / volume / (logsm_high - logsm_low)


# Compute the stellar mass function over all bins (loop over calc_smf_bin)
@jax.jit
def calc_smf(params, smf_bin_edges, volume, log_halo_masses):
    smf = []
    logsm_low = smf_bin_edges[0]
    for logsm_high in smf_bin_edges[1:]:
        smf_bin = calc_smf_bin(
            params, logsm_low, logsm_high, volume, log_halo_masses)
        smf.append(smf_bin)
        logsm_low = logsm_high
    return jnp.array(smf)
# --8<-- [end:cell2]

# --8<-- [start:cell3]
volume = 1.0
smf_bin_edges = jnp.linspace(9, 10, 11)

true_params = jnp.array([-2.0, -0.5])
log_halo_masses = jnp.log10(load_halo_masses(10_000))
true_smf = calc_smf(true_params, smf_bin_edges, volume, log_halo_masses)
# --8<-- [end:cell3]

# --8<-- [start:cell4]
def plot_hmf_and_smf(smf, plotarg="C0o-", label=None, axes=None):
    if axes is None:
        _, axes = plt.subplots(ncols=2, figsize=(10, 4))
    axes[0].hist(log_halo_masses, bins=50, color="C0")
    axes[0].semilogy()
    axes[0].set_xlabel("$\\log M_h$", fontsize=14)
    axes[0].set_ylabel("$\\Phi(\\log M_h)$", fontsize=14)

    smf_bin_cens = 0.5 * (smf_bin_edges[:-1] + smf_bin_edges[1:])
    axes[1].semilogy(smf_bin_cens, smf, plotarg, label=label)
    axes[1].legend(frameon=False)
    axes[1].set_xlabel("$\\log M_\\star$", fontsize=14)
    axes[1].set_ylabel("$\\Phi(\\log M_\\star)$", fontsize=14)
    return axes

plot_hmf_and_smf(true_smf, label="truth")
plt.show()
# --8<-- [end:cell4]

# --8<-- [start:cell5]
class MySMFModel(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        # Accessing global variables is fine, but I prefer to store them in
        # the `aux_data` attribute, which we will define during construction
        bin_edges = self.aux_data["smf_bin_edges"]
        volume = self.aux_data["volume"]
        log_halo_masses = self.aux_data["log_halo_masses"]

        return calc_smf(params, bin_edges, volume, log_halo_masses)

    def calc_loss_from_sumstats(self, sumstats):
        # Add 1e-10 so that log values always remain finite
        target_sumstats = jnp.log10(self.aux_data["target_sumstats"] + 1e-10)
        sumstats = jnp.log10(sumstats + 1e-10)
        # Reduced chi2 loss function assuming unit errors (mean squared error)
        return jnp.mean((sumstats - target_sumstats)**2)
# --8<-- [end:cell5]

# --8<-- [start:cell6]
aux_data = dict(
    log_halo_masses=log_halo_masses,
    smf_bin_edges=smf_bin_edges,
    volume=volume,
    target_sumstats=true_smf  # SMF at truth: params=(-2.0, 0.2)
)
model = MySMFModel(aux_data=aux_data)
# --8<-- [end:cell6]

# --8<-- [start:cell7]
# Since this notebook kernel is only a single MPI rank, the partial sumstats
# are identical to the total sumstats:
assert np.all(model.calc_partial_sumstats_from_params(true_params) ==
              model.calc_sumstats_from_params(true_params))

# Using the `calc_loss_and_grad_from_params` method:

# At the true set of parameters, the loss is at a global minimum of 0 :)
loss, gradloss = model.calc_loss_and_grad_from_params(true_params)
print("At true_params:")
print("Loss =", loss)
print("Grad(loss) =", gradloss)

# Perturbing these parameters yields a descendable gradient
loss, gradloss = model.calc_loss_and_grad_from_params(
    true_params + jnp.array([0.1, 0.1]))
print("At true_params + [0.1, 0.1]:")
print("Loss =", loss)
print("Grad(loss) =", gradloss)
# --8<-- [end:cell7]

# --8<-- [start:cell8]
# Initial guess for our parameters. If it's too far off, there is always a
# risk of getting stuck in local minima or other zero-valued gradients
init_params = true_params + jnp.array([-1.5, 0.7])

# Run gradient descent using the BFGS method powered by scipy
params, loss, results = model.run_bfgs(init_params)
print("BGFS has converged:", results.success, flush=True)
print("Initial guess =", init_params, flush=True)
print("True params =", true_params, flush=True)
print("Converged params =", results.x, flush=True)
print("\nFull results info:", flush=True)
print(results, flush=True)
# --8<-- [end:cell8]

# --8<-- [start:cell9]
axes = plot_hmf_and_smf(true_smf, label="Truth")
axes = plot_hmf_and_smf(model.calc_sumstats_from_params(init_params),
                        "k--", label="Initial guess", axes=axes)
axes = plot_hmf_and_smf(model.calc_sumstats_from_params(results.x),
                        "r--", label="Best fit", axes=axes)
# --8<-- [end:cell9]

# --- not part of the notebook: save the figures for the docs and tests ---
import sys as _sys, pathlib as _pathlib
_out = _pathlib.Path(_sys.argv[1] if len(_sys.argv) > 1 else ".")
for _i, _num in enumerate(plt.get_fignums()):
    plt.figure(_num).savefig(_out / f"multigrad_quickstart_{_i}.png", bbox_inches="tight")
