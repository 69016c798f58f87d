"""OnePointGroup: several models on their own sub-communicators, losses summed."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .. import _comm
from .._keys import as_key
from .._params import as_params
from ._fitting import FitMethods, with_layout_checked
from ._model import OnePointModel


@eqx.filter_jit
def _group_loss_and_grad(group, params, randkey):
    return jax.value_and_grad(group.calc_loss_from_params)(params, randkey)


class OnePointGroup(FitMethods):
    """Models on different sub-communicators whose losses are summed.

    Each rank holds the models it takes part in (usually the one model of its
    sub-communicator; see :func:`diffopt.multigrad.split_subcomms`). The group
    loss is the sum of every model's loss, over all groups, and its gradient
    is exact: each model's loss enters the sum over ``main_comm`` weighted by
    one over its communicator's size, so every model is counted once.

    Parameters
    ----------
    models : tuple[OnePointModel] | OnePointModel
        The models held by this rank, each providing a loss component to be
        summed. Models with ``loss_func_has_aux`` contribute their loss only.
    main_comm : MPI.Intracomm (default=COMM_WORLD)
        MPI communicator for the entire group (each model should be assigned
        its own sub-communicator of it).
    """

    models: tuple[OnePointModel, ...]
    main_comm: _comm.StaticComm = eqx.field(default=None, static=True)

    def __init__(self, models: tuple[OnePointModel, ...] | OnePointModel, main_comm: Any = None):
        if isinstance(models, OnePointModel):
            models = (models,)
        models = tuple(models)
        for i, model in enumerate(models):
            if not isinstance(model, OnePointModel):
                raise TypeError(f"models[{i}] must be a OnePointModel, got {type(model).__name__}")
        self.models = models
        self.main_comm = _comm.default_comm(main_comm)

    def __hash__(self) -> int:
        return hash((type(self), id(self)))

    @property
    def fit_comm(self) -> _comm.StaticComm:
        return self.main_comm

    def _checked(self, params: PyTree, randkey: Any) -> OnePointGroup:
        checked = with_layout_checked(self)
        object.__setattr__(checked, "models", tuple(m._checked(params, randkey) for m in self.models))
        return checked

    def calc_sumstats_and_loss_from_params(self, params: PyTree, randkey: Any = None) -> tuple:
        """Return ``(sumstats, loss)``: this rank's models' sumstats and the group loss."""
        params = _comm.replicate(as_params(params), self.main_comm)
        randkey = as_key(randkey)
        # The default float dtype on every rank, whatever dtypes the models return.
        sumstats, local = [], jnp.zeros((), jnp.result_type(float))
        for model in self.models:
            stats, result = model.calc_sumstats_and_loss_from_params(params, randkey)
            loss = result[0] if model.loss_func_has_aux else result
            sumstats.append(stats)
            local = local + loss / model.comm.size
        loss = _comm.sum_over_ranks(
            local, self.main_comm, name="group losses", check_layout=not self._layout_checked
        )
        return tuple(sumstats), loss

    def calc_loss_from_params(self, params: PyTree, randkey: Any = None) -> jax.Array:
        """The sum of the models' losses at ``params`` (the same on every rank)."""
        return self.calc_sumstats_and_loss_from_params(params, randkey)[1]

    def calc_dloss_dparams(self, params: PyTree, randkey: Any = None) -> PyTree:
        """Gradient of the group loss with respect to the parameters."""
        return self.calc_loss_and_grad_from_params(params, randkey)[1]

    def calc_loss_and_grad_from_params(self, params: PyTree, randkey: Any = None) -> tuple:
        """The group loss and its gradient, compiled once per input shape."""
        return _group_loss_and_grad(self, as_params(params), as_key(randkey))
