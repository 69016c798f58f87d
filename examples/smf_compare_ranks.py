"""The seed SMF model's loss and gradient on however many ranks run this.

Run it with ``python`` and with ``mpiexec -n 2``: the numbers agree, because
multigrad differentiates exactly through the sum over ranks.
"""

import jax
import jax.numpy as jnp
import runpy
from pathlib import Path

from mpi4py import MPI

seed = runpy.run_path(str(Path(__file__).with_name("smf_grad_descent.py")), run_name="smf")
volume, smf_bin_edges = 1.0, jnp.linspace(9, 10, 11)
true_params = jnp.array([-2.0, -0.5])
log_halo_masses = jnp.log10(seed["load_halo_masses"](10_000))
model = seed["MySMFModel"](aux_data=dict(
    log_halo_masses=log_halo_masses, smf_bin_edges=smf_bin_edges, volume=volume,
    target_sumstats=seed["multigrad"].reduce_sum(
        seed["calc_smf"](true_params, smf_bin_edges, volume, log_halo_masses)),
))
loss, grad = model.calc_loss_and_grad_from_params(true_params + jnp.array([0.1, 0.1]))
if MPI.COMM_WORLD.rank == 0:
    print(f"{MPI.COMM_WORLD.size} rank(s), {log_halo_masses.size} halos on rank 0: "
          f"loss = {float(loss):.8g}, grad = {jax.device_get(grad)}")
