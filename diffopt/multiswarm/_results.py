"""Reading the best result out of a particle swarm history."""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike, Float


def get_best_loss_and_params(
    loss_history: Float[ArrayLike, "nsteps nparticles"],
    params_history: Float[ArrayLike, "nsteps nparticles ndim"],
) -> tuple[float, Float[np.ndarray, " ndim"]]:
    """Return the lowest loss in a run and the parameters that gave it.

    Parameters
    ----------
    loss_history : array of shape (nsteps, nparticles)
        Loss of every particle at every step, ``results["swarm_loss_history"]``
        from :meth:`ParticleSwarm.run_pso`.
    params_history : array of shape (nsteps, nparticles, ndim)
        Position of every particle at every step,
        ``results["swarm_x_history"]``.

    Returns
    -------
    best_loss : float
        The lowest finite loss (NaN losses are ignored).
    best_params : np.ndarray of shape (ndim,)
        The position where it was reached.

    Raises
    ------
    ValueError
        If the shapes do not match or no loss is finite.
    """
    loss_history = np.asarray(loss_history)
    params_history = np.asarray(params_history)
    if params_history.shape[:-1] != loss_history.shape or params_history.ndim < 2:
        raise ValueError(
            "params_history must have the shape of loss_history plus one trailing "
            f"axis of parameters; got loss_history {loss_history.shape} and "
            f"params_history {params_history.shape}"
        )
    losses = loss_history.ravel()
    if not np.any(np.isfinite(losses)):
        raise ValueError("loss_history has no finite loss")
    best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    return float(losses[best]), params_history.reshape(losses.size, -1)[best]
