"""Under mpiexec: a diffopt 2.0 user's script, on split data, agrees with one process.

Usage: release_compat.py NRANKS

Written the way 2.0 scripts are: a ``@dataclass`` model with ``aux_data: dict``
and no default, parameters as a ``NamedTuple`` of floats, ``run_adam``
unpacked as ``(params, losses)``, ``gd_params[-1]`` used as the final
parameter vector. Every fit runs on the halos split over the ranks and on
all halos in one process (``COMM_SELF``); both must agree to round-off, and
every rank must hold the same arrays.
"""

import sys
from dataclasses import dataclass
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import jax.scipy  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


class ParamTuple(NamedTuple):
    log_f: float = -2.0
    sigma: float = 0.3


def smf(params, log_mh, edges):
    params = ParamTuple(*params)
    mean = log_mh + params.log_f
    sigma = jnp.abs(params.sigma)
    cdf = 0.5 * (1 + jax.scipy.special.erf((edges[:, None] - mean) / (jnp.sqrt(2) * sigma)))
    return jnp.sum(cdf[1:] - cdf[:-1], axis=1) / (edges[1:] - edges[:-1])


@dataclass
class SMFModel(multigrad.OnePointModel):
    aux_data: dict
    loss_func_has_aux: bool = False

    def calc_partial_sumstats_from_params(self, params):
        return smf(params, self.aux_data["log_mh"], self.aux_data["edges"])

    def calc_loss_from_sumstats(self, sumstats, sumstats_aux=None):
        target = jnp.log10(self.aux_data["target"] + 1e-5)
        return jnp.mean((jnp.log10(sumstats + 1e-5) - target) ** 2)


log_mh = np.log10(1e10 / (1 - np.linspace(0, 0.9, 5_000)))
edges = jnp.linspace(9, 10, 11)
truth = ParamTuple(-2.0, 0.3)
target = smf(truth, log_mh, edges)
split = SMFModel(aux_data=dict(log_mh=np.array_split(log_mh, comm.size)[comm.rank], edges=edges, target=target))
whole = SMFModel(aux_data=dict(log_mh=log_mh, edges=edges, target=target), comm=MPI.COMM_SELF)
guess = ParamTuple(log_f=-1.8, sigma=0.4)


def same_everywhere(name, value):
    blobs = comm.allgather(np.asarray(value).tobytes())
    assert len(set(blobs)) == 1, f"{name}: ranks disagree"


def close(name, got, want, rtol=1e-11):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-13, err_msg=name)
    same_everywhere(name, got)


# Gradients of a NamedTuple guess are arrays of its shape.
grad = split.calc_dloss_dparams(guess)
loss, grad2 = split.calc_loss_and_grad_from_params(guess)
assert isinstance(grad, jax.Array) and grad.shape == (2,)
assert jnp.allclose(grad, grad2)
close("grad", grad, whole.calc_dloss_dparams(guess))
close("loss", loss, whole.calc_loss_from_params(guess))

# Histories of a NamedTuple guess are arrays of shape (nsteps + 1, 2).
gd = split.run_simple_grad_descent(guess=guess, nsteps=20, learning_rate=0.01, progress=False)
gd_loss, gd_params = gd.loss, gd.params
assert gd_params.shape == (20, 2) and gd_params.shape[1] == 2 and gd_loss.shape == (20,)
assert gd_loss[-1] < gd_loss[0]
close("simple grad descent", gd_params, whole.run_simple_grad_descent(
    guess=guess, nsteps=20, learning_rate=0.01, progress=False).params)

adam_params, adam_losses = split.run_adam(guess=guess, nsteps=30, progress=False)
assert adam_params.shape == (31, 2) and adam_losses.shape == (31,)
whole_params, whole_losses = whole.run_adam(guess=guess, nsteps=30, progress=False)
close("adam params", adam_params, whole_params)
close("adam losses", adam_losses, whole_losses)

bfgs_params, bfgs_losses, result = split.run_bfgs(guess=guess, maxsteps=100, progress=False)
assert result.success and bfgs_params.ndim == 2 and bfgs_params.shape[1] == 2
assert len(bfgs_losses) == len(bfgs_params)
np.testing.assert_allclose(np.abs(bfgs_params[-1]), np.abs([*truth]), atol=1e-3, rtol=0)
same_everywhere("bfgs", bfgs_params)
# The model can be rebuilt from the final row, as 2.0 scripts do.
final = ParamTuple(*bfgs_params[-1].tolist())
close("sumstats at the fit", split.calc_sumstats_from_params(final), whole.calc_sumstats_from_params(final))

# A group of one model per sub-communicator: run_adam returns (params, losses) too.
subcomm, _, _ = multigrad.split_subcomms(num_groups=1)
group = multigrad.OnePointGroup(SMFModel(aux_data=split.aux_data, comm=subcomm))
group_params, group_losses = group.run_adam(guess=guess, nsteps=30, progress=False)
close("group adam params", group_params, whole_params)
close("group adam losses", group_losses, whole_losses)

if comm.rank == 0:
    print(f"release compat: OK on {comm.size} ranks", flush=True)
