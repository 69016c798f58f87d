"""OnePointModel: sum partial summary statistics over ranks, exactly differentiably."""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from .. import _comm
from .._keys import as_key, key_kwargs
from .._params import as_params
from ._fitting import FitMethods, with_layout_checked


@eqx.filter_jit
def _dloss_dparams(model, params, randkey):
    return jax.grad(model.calc_loss_from_params, has_aux=model.loss_func_has_aux)(params, randkey)


@eqx.filter_jit
def _loss_and_grad(model, params, randkey):
    return jax.value_and_grad(model.calc_loss_from_params, has_aux=model.loss_func_has_aux)(
        params, randkey
    )


class OnePointModel(FitMethods):
    """A model whose summary statistics are sums over data split across MPI ranks.

    Subclass it and define two methods:

    - ``calc_partial_sumstats_from_params(self, params[, randkey])``, which
      returns this rank's share of the summary statistics (an array, or a
      pytree of arrays, that can be summed over ranks), and
    - ``calc_loss_from_sumstats(self, sumstats[, sumstats_aux][, randkey])``,
      which maps the total summary statistics to a scalar loss.

    The model sums the partial statistics over ``comm`` and differentiates
    through that sum exactly: ``jax.grad``, ``jax.hessian`` and ``jax.jacfwd``
    of :meth:`calc_loss_from_params` equal the single-process values on the
    full data, on every rank. The model is an ``equinox.Module``, so it can be
    passed into ``jax.jit``-compiled functions as an argument.

    Parameters
    ----------
    aux_data : Any (default=None)
        Any auxiliary data (a pytree: arrays are leaves) for easy access
        within the sumstats and loss methods.
    comm : MPI.Intracomm (default=COMM_WORLD)
        MPI communicator over whose ranks the partial sumstats are summed.
    loss_func_has_aux : bool (default=False)
        If true, ``calc_loss_from_sumstats(...) -> (loss, aux)`` is assumed,
        and the loss methods return ``(loss, aux)`` the way
        ``jax.value_and_grad(..., has_aux=True)`` does.
    sumstats_func_has_aux : bool (default=False)
        If true, ``calc_partial_sumstats_from_params(params) -> (sumstats,
        aux)`` and ``calc_loss_from_sumstats(sumstats, aux)`` are assumed.
        Only ``sumstats`` is summed over ranks; ``aux`` stays rank-local.
    """

    aux_data: Any = None
    comm: _comm.StaticComm = eqx.field(default=None, static=True)
    loss_func_has_aux: bool = eqx.field(default=False, static=True)
    sumstats_func_has_aux: bool = eqx.field(default=False, static=True)

    def __post_init__(self):
        self.comm = _comm.default_comm(self.comm)

    # A bound method must be hashable for ``jax.jit(model.method)``; fields
    # such as dicts of arrays are not, so a model hashes by identity.
    def __hash__(self) -> int:
        return hash((type(self), id(self)))

    @property
    def fit_comm(self) -> _comm.StaticComm:
        return self.comm

    # --- to be defined by the user -------------------------------------------

    @abc.abstractmethod
    def calc_partial_sumstats_from_params(self, params: PyTree, randkey: Any = None) -> PyTree:
        """Custom method to map parameters to this rank's partial summary statistics."""

    @abc.abstractmethod
    def calc_loss_from_sumstats(
        self, sumstats: PyTree, sumstats_aux: Any = None, randkey: Any = None
    ) -> Any:
        """Custom method to map the total summary statistics to a scalar loss."""

    # --- provided ---------------------------------------------------------------

    def _checked(self, params: PyTree, randkey: Any) -> OnePointModel:
        if self.comm.size > 1:
            stats = eqx.filter_eval_shape(
                self.calc_partial_sumstats_from_params, params, **key_kwargs(randkey)
            )
            _comm.check_layouts(stats[0] if self.sumstats_func_has_aux else stats, self.comm)
        return with_layout_checked(self)

    def calc_sumstats_from_params(
        self, params: PyTree, total: bool = True, randkey: Any = None
    ) -> PyTree:
        """Compute summary statistics at given parameters.

        Parameters
        ----------
        params : array-like or pytree
            Model parameters.
        total : bool (default=True)
            If true (default), sumstats will be summed over all MPI ranks.
        randkey : PRNGKey | int (default=None)
            If set to a value other than None, the "randkey" kwarg will be
            passed to user-defined methods.

        Returns
        -------
        array (or pytree)
            Summary statistics evaluated at given parameters, or
            ``(sumstats, aux)`` if ``sumstats_func_has_aux``.
        """
        params = as_params(params)
        if total:
            params = _comm.replicate(params, self.comm)
        out = self.calc_partial_sumstats_from_params(params, **key_kwargs(as_key(randkey)))
        if not total:
            return out
        if self.sumstats_func_has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "sumstats_func_has_aux=True, so calc_partial_sumstats_from_params "
                    f"must return (sumstats, aux); got {type(out).__name__}"
                )
            sumstats, aux = out
            return self._sum_over_ranks(sumstats), aux
        return self._sum_over_ranks(out)

    def _sum_over_ranks(self, sumstats: PyTree) -> PyTree:
        return _comm.sum_over_ranks(sumstats, self.comm, check_layout=not self._layout_checked)

    def calc_sumstats_and_loss_from_params(self, params: PyTree, randkey: Any = None) -> tuple:
        """Return ``(sumstats, loss)``: the total sumstats and the loss at ``params``."""
        randkey = as_key(randkey)
        out = self.calc_sumstats_from_params(params, randkey=randkey)
        args = out if self.sumstats_func_has_aux else (out,)
        result = self.calc_loss_from_sumstats(*args, **key_kwargs(randkey))
        loss = result[0] if self.loss_func_has_aux else result
        if jnp.shape(loss) != ():
            raise TypeError(
                "calc_loss_from_sumstats must return a scalar loss"
                + (" (as the first element of (loss, aux))" if self.loss_func_has_aux else "")
                + f"; got shape {jnp.shape(loss)}"
            )
        return args[0], result

    def calc_loss_from_params(self, params: PyTree, randkey: Any = None) -> Any:
        """Calculate the loss evaluated at a given set of parameters.

        Parameters
        ----------
        params : array-like or pytree
            Model parameters.
        randkey : PRNGKey | int (default=None)
            If set to a value other than None, the "randkey" kwarg will be
            passed to user-defined methods.

        Returns
        -------
        float
            The loss evaluated at the parameters given (``(loss, aux)`` if
            ``loss_func_has_aux``).
        """
        return self.calc_sumstats_and_loss_from_params(params, randkey)[1]

    def calc_dloss_dparams(self, params: PyTree, randkey: Any = None) -> PyTree:
        """Calculate the gradient of the loss w.r.t. model parameters.

        Parameters
        ----------
        params : array-like or pytree
            Model parameters.
        randkey : PRNGKey | int (default=None)
            If set to a value other than None, the "randkey" kwarg will be
            passed to user-defined methods.

        Returns
        -------
        array (or pytree like params)
            Gradient of the loss with respect to each parameter (``(grad,
            aux)`` if ``loss_func_has_aux``).
        """
        return _dloss_dparams(self, as_params(params), as_key(randkey))

    def calc_loss_and_grad_from_params(self, params: PyTree, randkey: Any = None) -> tuple:
        """Calculate the loss and its gradient.

        This returns the equivalent of ``(calc_loss_from_params(x),
        calc_dloss_dparams(x))`` in one pass, compiled once per input shape.

        Parameters
        ----------
        params : array-like or pytree
            Model parameters.
        randkey : PRNGKey | int (default=None)
            If set to a value other than None, the "randkey" kwarg will be
            passed to user-defined methods.

        Returns
        -------
        float
            The loss evaluated at the parameters given (``(loss, aux)`` if
            ``loss_func_has_aux``).
        array (or pytree like params)
            Gradient of the loss with respect to each parameter.
        """
        return _loss_and_grad(self, as_params(params), as_key(randkey))
