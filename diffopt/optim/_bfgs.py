"""BFGS: an adapter onto SciPy's L-BFGS-B, identical on every rank."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import equinox as eqx
from jaxtyping import PyTree
from scipy.optimize import OptimizeResult, minimize

from .. import _comm
from .._keys import as_key
from ._bounds import check_inside, parse_bounds
from ._checks import check_count, check_guess, check_replicated_inputs, raise_nonfinite_guess
from ._flat import flatten_like, kept_rows, unflatten, unflatten_rows
from ._progress import progress_bar


class _NonFinite(Exception):
    pass


@eqx.filter_jit
def _flat_loss_and_grad(loss_and_grad, x, key, spec):
    loss, grad = loss_and_grad(unflatten(x, spec), key)
    return loss, flatten_like(grad, x.dtype)


def scipy_bfgs(
    loss_and_grad: Callable,
    guess: PyTree,
    maxsteps: int = 100,
    *,
    param_bounds: Any = None,
    randkey: Any = None,
    thin: int = 1,
    progress: bool = True,
    desc: str = "BFGS Gradient Descent Progress",
    comm: Any = None,
) -> tuple[PyTree, jax.Array, OptimizeResult]:
    """Minimise with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``.

    ``loss_and_grad(params, randkey) -> (loss, grad)`` is compiled once. Every
    rank runs SciPy in lockstep on rank 0's loss and gradient, so all ranks
    take the same steps and return the same result.

    Parameters
    ----------
    loss_and_grad : callable
        ``loss_and_grad(params, randkey) -> (loss, grad)``.
    guess : pytree of arrays
        Initial parameters.
    maxsteps : int (default=100)
        Maximum number of iterations.
    param_bounds : Sequence, optional
        ``(lower, upper)`` per flattened parameter; None or +-inf for an open side.
    randkey : int | PRNG key, optional
        Passed unchanged at every call (BFGS needs a deterministic loss).
    thin : int (default=1)
        Record every ``thin``-th iteration (the last always); 0 returns only
        the final parameters and loss, unstacked.
    progress : bool (default=True)
        Show a progress bar on rank 0.
    comm : MPI.Intracomm, optional
        Communicator of the ranks taking part.

    Returns
    -------
    params : array (or pytree)
        Parameters after each iteration, the guess first.
    losses : array
        Loss at each of those parameters.
    result : scipy.optimize.OptimizeResult
        SciPy's result, identical on every rank; ``result.x`` is flat.

    Raises
    ------
    NonFiniteGuessError
        A ``ValueError``, on every rank, if the loss or its gradient is not
        finite at the guess.
    """
    maxsteps = check_count("maxsteps", maxsteps)
    thin = check_count("thin", thin)
    comm = _comm.default_comm(comm)
    guess, flat_guess, spec = check_guess(guess)
    x0 = np.asarray(flat_guess, dtype=np.float64)
    bounds = parse_bounds(param_bounds, x0.size)
    if bounds is not None:
        check_inside(x0, bounds)
        bounds = [(None if np.isinf(lo) else lo, None if np.isinf(hi) else hi) for lo, hi in zip(*bounds)]
    key = as_key(randkey)
    check_replicated_inputs(x0, key, comm)
    dtype = flat_guess.dtype

    def flat_loss_and_grad(x, key):
        return _flat_loss_and_grad(loss_and_grad, jax.device_put(np.asarray(x, dtype)), key, spec)

    # Loss at every evaluated point, and whether its gradient was finite.
    history: dict[bytes, tuple[float, bool]] = {}

    def fun(x):
        loss, grad = flat_loss_and_grad(x, key)
        loss, grad = float(loss), np.asarray(grad, dtype=np.float64)
        if comm.size > 1:
            # Identical inputs to SciPy on every rank keep the ranks in lockstep.
            loss, grad = _comm.bcast((loss, grad), comm=comm)
        finite = bool(np.isfinite(loss) and np.all(np.isfinite(grad)))
        if not history and not finite:
            raise_nonfinite_guess(desc, loss)
        # A non-finite trial point is fine: the line search backs off from it.
        history[x.tobytes()] = (loss, bool(np.all(np.isfinite(grad))))
        return loss, grad

    xs = [x0]

    with progress_bar(maxsteps, desc, progress, comm) as bar:
        def callback(intermediate_result):
            x = np.array(intermediate_result.x)
            loss, grad_finite = history.get(x.tobytes(), (intermediate_result.fun, True))
            if not (np.isfinite(loss) and grad_finite and np.all(np.isfinite(x))):
                raise _NonFinite(loss)
            xs.append(x)
            bar.update(1)

        try:
            result = minimize(
                fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                options={"maxiter": maxsteps}, callback=callback,
            )
            bad_trials = sum(not (np.isfinite(loss) and ok) for loss, ok in history.values())
            if not result.success and bad_trials:
                warnings.warn(
                    f"BFGS: SciPy stopped without converging ({result.message}) after "
                    f"{bad_trials} trial point(s) gave a non-finite loss or gradient",
                    RuntimeWarning,
                    stacklevel=2,
                )
        except _NonFinite as exc:
            warnings.warn(
                f"BFGS: the loss or its gradient became non-finite at iteration {len(xs)} "
                f"(loss = {exc.args[0]}); stopped there, returning the history up to the last "
                "finite iteration",
                RuntimeWarning,
                stacklevel=2,
            )
            x_last = xs[-1]
            result = OptimizeResult(
                x=x_last, fun=history.get(x_last.tobytes(), (np.nan,))[0], success=False,
                status=-1, nit=len(xs) - 1, nfev=len(history),
                message="stopped: non-finite loss or gradient",
            )

    xs = np.array(xs)
    losses = np.array([history.get(x.tobytes(), (np.nan,))[0] for x in xs])
    missing = np.flatnonzero(np.isnan(losses))
    for i in missing:  # SciPy's callback may report a point it did not evaluate last
        losses[i] = float(flat_loss_and_grad(xs[i], key)[0])
    keep = kept_rows(len(xs), thin)
    params = unflatten_rows(xs[keep], spec, isinstance(guess, jax.Array))
    return params, jax.device_put(losses[keep]), result
