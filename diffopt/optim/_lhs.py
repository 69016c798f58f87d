"""Latin-hypercube parameter scans."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from scipy.stats import qmc

from ._checks import check_count


def latin_hypercube(xmins, xmaxs, n_dim: int, num_evaluations: int, seed: int | None = None) -> np.ndarray:
    """Draw ``num_evaluations`` points of a Latin hypercube in ``[xmins, xmaxs]``."""
    n_dim = check_count("n_dim", n_dim, minimum=1)
    num_evaluations = check_count("num_evaluations", num_evaluations, minimum=1)
    lo = np.broadcast_to(np.asarray(xmins, dtype=float), (n_dim,))
    hi = np.broadcast_to(np.asarray(xmaxs, dtype=float), (n_dim,))
    bad = np.flatnonzero(~(np.isfinite(lo) & np.isfinite(hi) & (lo < hi)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"xmins[{i}] = {lo[i]} must be finite and below xmaxs[{i}] = {hi[i]}")
    unit = qmc.LatinHypercube(d=n_dim, seed=seed).random(num_evaluations)
    return qmc.scale(unit, lo, hi)


def lhs_param_scan(
    sumstats_and_loss: Callable,
    xmins: Any,
    xmaxs: Any,
    n_dim: int,
    num_evaluations: int,
    seed: int | None = None,
) -> tuple[Float[Array, "n ndim"], Any, Float[Array, " n"]]:
    """Evaluate ``sumstats_and_loss(params) -> (sumstats, loss)`` over a Latin hypercube.

    Every rank draws the same points (``seed`` must then be given, or is
    broadcast by the caller), and the points are evaluated one at a time with
    a compiled function, so collective operations inside stay in step.

    Returns
    -------
    params, sumstats, losses
        The drawn parameters, and the sumstats and loss at each of them.
    """
    params = latin_hypercube(xmins, xmaxs, n_dim, num_evaluations, seed)
    evaluate = jax.jit(sumstats_and_loss)
    outs = [evaluate(jnp.asarray(p, dtype=jnp.result_type(float))) for p in params]
    sumstats = jax.tree_util.tree_map(lambda *s: jnp.stack(s), *[o[0] for o in outs])
    losses = jnp.stack([o[1] for o in outs])
    return jnp.asarray(params), sumstats, losses
