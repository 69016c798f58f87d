"""``kdescent.adam`` and ``kdescent.bfgs``: thin conveniences over :mod:`diffopt.optim`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import optax
from jaxtyping import Array, PyTree
from scipy.optimize import OptimizeResult

from .. import optim
from ..optim._checks import check_positive

__all__ = ["adam", "bfgs"]


class _LossAndGrad(eqx.Module):
    """``(params, randkey) -> (loss, grad)`` for a user's ``lossfunc``.

    A Module rather than a closure, so that a second fit of the same loss
    reuses the compiled loop: the compiled functions it is passed to take its
    arrays (those of ``other_kwargs``, or of a model whose method
    ``lossfunc`` is) as arguments and key their cache on the rest.
    """

    lossfunc: Callable
    with_key: bool = eqx.field(static=True)
    kwargs: dict

    def __call__(self, params, randkey):
        args = (randkey,) if self.with_key else ()
        return jax.value_and_grad(self.lossfunc)(params, *args, **self.kwargs)


def adam(
    lossfunc: Callable,
    guess: PyTree,
    nsteps: int = 100,
    param_bounds: Any = None,
    learning_rate: float = 0.01,
    randkey: Any = 1,
    const_randkey: bool = False,
    thin: int = 1,
    progress: bool = True,
    *,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint: str | None = None,
    checkpoint_every: int = 100,
    comm: Any = None,
    **other_kwargs: Any,
) -> tuple[PyTree, Array]:
    """Minimise ``lossfunc`` with adam (or any optax optimiser), in one compiled loop.

    Parameters
    ----------
    lossfunc : callable
        ``lossfunc(params, randkey, **other_kwargs) -> loss`` (without
        ``randkey`` when ``randkey=None``), differentiable with JAX.
    guess : array (or pytree of arrays)
        Initial parameters.
    nsteps : int (default 100)
        Number of steps.
    param_bounds : sequence, optional
        ``(lower, upper)`` for each parameter, ``None`` (or +-inf) for an open
        side, or ``None`` for an unbounded parameter. Bounded parameters are
        optimised through a smooth change of variables.
    learning_rate : float (default 0.01)
        Adam's learning rate (ignored when ``optimizer`` is given).
    randkey : int or PRNG key (default 1)
        Step ``t`` receives ``jax.random.fold_in(key, t)``: fresh kernels
        every step, the same on every MPI rank. ``None`` calls ``lossfunc``
        without a key.
    const_randkey : bool (default False)
        Pass the same key at every step instead.
    thin : int (default 1)
        Return every ``thin``-th step only (the final parameters always); 0
        returns only the final parameters and loss, unstacked.
    progress : bool (default True)
        Show a progress bar (on rank 0).
    optimizer : optax.GradientTransformation, optional
        Any optax optimiser to use instead of ``optax.adam(learning_rate)``.
    checkpoint : str, optional
        Checkpoint path. Rank 0 saves the fit there every
        ``checkpoint_every`` steps; the same call with the same path resumes.
    checkpoint_every : int (default 100)
        Steps between checkpoints.
    comm : MPI.Intracomm, optional
        The ranks running this fit together (default ``MPI.COMM_WORLD``):
        they must pass the same guess and key. ``MPI.COMM_SELF`` lets each
        rank run a fit of its own.
    **other_kwargs
        Passed on to ``lossfunc`` at every step.

    Returns
    -------
    params : array (or pytree)
        Parameters at every step, stacked: the guess first, the final
        parameters last (``nsteps + 1`` rows before thinning).
    losses : array
        The loss at each row of ``params``. If the loss or its gradient
        becomes non-finite, the fit stops there with a ``RuntimeWarning``
        and both end at the last finite step.
    """
    if optimizer is None:
        optimizer = optax.adam(check_positive("learning_rate", learning_rate))
    result = optim.fit(
        _LossAndGrad(lossfunc, randkey is not None, other_kwargs), guess, optimizer, nsteps,
        param_bounds=param_bounds, randkey=randkey, const_randkey=const_randkey, thin=thin,
        progress=progress, desc="Adam Gradient Descent Progress", comm=comm,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every,
    )
    return result.params, result.losses


def bfgs(
    lossfunc: Callable,
    guess: PyTree,
    maxsteps: int = 100,
    param_bounds: Any = None,
    randkey: Any = None,
    thin: int = 1,
    progress: bool = True,
    *,
    comm: Any = None,
    **other_kwargs: Any,
) -> tuple[PyTree, Array, OptimizeResult]:
    """Minimise ``lossfunc`` with SciPy's L-BFGS-B, gradients from JAX.

    BFGS needs a deterministic loss: ``randkey`` (if given) is passed
    unchanged at every call, so the kernels stay fixed.

    Parameters
    ----------
    lossfunc : callable
        ``lossfunc(params, randkey, **other_kwargs) -> loss`` (without
        ``randkey`` when it is None).
    guess : array (or pytree of arrays)
        Initial parameters.
    maxsteps : int (default 100)
        Maximum number of iterations.
    param_bounds : sequence, optional
        ``(lower, upper)`` per parameter, as for :func:`adam` (handed to
        L-BFGS-B as box constraints).
    randkey : int or PRNG key, optional
        Key passed to ``lossfunc`` at every call.
    thin : int (default 1)
        Return every ``thin``-th iteration only (the last always; 0: the last
        only, unstacked).
    progress : bool (default True)
        Show a progress bar (on rank 0).
    comm : MPI.Intracomm, optional
        The ranks running this fit together (default ``MPI.COMM_WORLD``),
        as for :func:`adam`.
    **other_kwargs
        Passed on to ``lossfunc``.

    Returns
    -------
    params : array (or pytree)
        Parameters after each iteration, the guess first.
    losses : array
        Loss at each of those parameters.
    result : scipy.optimize.OptimizeResult
        SciPy's result.
    """
    return optim.scipy_bfgs(
        _LossAndGrad(lossfunc, randkey is not None, other_kwargs), guess, maxsteps,
        param_bounds=param_bounds, randkey=randkey, thin=thin, progress=progress,
        desc="BFGS Gradient Descent Progress", comm=comm,
    )
