"""Parameter bounds as a smooth change of variables around any optimiser.

A bounded parameter ``p`` is written as a function of an unbounded ``z``:

- both sides finite: ``p = lo + (hi - lo) * sigmoid(z)``
- lower side only: ``p = lo + softplus(z)``
- upper side only: ``p = hi - softplus(z)``
- open: ``p = z``

The optimiser steps in ``z``; the history is reported in ``p``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


def parse_bounds(param_bounds: Any, ndim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Read bounds of "shape" ``(ndim, 2)``; ``None`` or +-inf mark an open side."""
    if param_bounds is None:
        return None
    rows = list(np.asarray(param_bounds) if isinstance(param_bounds, jax.Array) else param_bounds)
    if len(rows) != ndim:
        raise ValueError(
            f"param_bounds must have one (lower, upper) row per parameter: expected {ndim} rows, "
            f"got {len(rows)}"
        )
    lower = np.full(ndim, -np.inf)
    upper = np.full(ndim, np.inf)
    for i, row in enumerate(rows):
        if row is None:
            continue
        row = list(row) if isinstance(row, (list, tuple)) else list(np.ravel(row))
        if len(row) != 2:
            raise ValueError(f"param_bounds[{i}] must be (lower, upper) or None, got {row!r}")
        for j, side in enumerate(row):
            if side is None:
                continue
            try:
                value = float(side)
            except (TypeError, ValueError):
                raise TypeError(f"param_bounds[{i}][{j}] must be a number or None, got {side!r}") from None
            if np.isnan(value):
                raise ValueError(f"param_bounds[{i}][{j}] is NaN")
            (lower if j == 0 else upper)[i] = value
        if not lower[i] < upper[i]:
            raise ValueError(
                f"param_bounds[{i}]: lower bound {lower[i]} must be below upper bound {upper[i]}"
            )
    return lower, upper


def check_inside(flat_guess: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], name: str = "guess"):
    lower, upper = bounds
    bad = np.flatnonzero(~((flat_guess > lower) & (flat_guess < upper)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] = {flat_guess[i]} must lie strictly inside param_bounds[{i}] = "
            f"({lower[i]}, {upper[i]})"
        )


class Reparam(eqx.Module):
    """The map between unbounded optimiser variables ``z`` and parameters ``p``."""

    lower: Float[Array, " ndim"]
    upper: Float[Array, " ndim"]

    def _sides(self):
        has_lo = jnp.isfinite(self.lower)
        has_hi = jnp.isfinite(self.upper)
        lo = jnp.where(has_lo, self.lower, 0.0)
        hi = jnp.where(has_hi, self.upper, 0.0)
        return has_lo, has_hi, lo, hi

    def to_params(self, z: Float[Array, " ndim"]) -> Float[Array, " ndim"]:
        has_lo, has_hi, lo, hi = self._sides()
        both = lo + (hi - lo) * jax.nn.sigmoid(z)
        lower_only = lo + jax.nn.softplus(z)
        upper_only = hi - jax.nn.softplus(z)
        return jnp.where(
            has_lo & has_hi, both, jnp.where(has_lo, lower_only, jnp.where(has_hi, upper_only, z))
        )

    def log_abs_det_jacobian(self, z: Float[Array, " ndim"]) -> Float[Array, ""]:
        """``log |det dp/dz|``: what a density in ``p`` gains when sampled in ``z``.

        Each parameter maps on its own, so the Jacobian is diagonal:
        ``log(hi - lo) + log sigmoid(z) + log sigmoid(-z)`` with both bounds,
        ``log sigmoid(z)`` with one, and 0 without.
        """
        has_lo, has_hi, lo, hi = self._sides()
        width = jnp.where(has_lo & has_hi, hi - lo, 1.0)
        both = jnp.log(width) + jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z)
        one_side = jax.nn.log_sigmoid(z)
        return jnp.sum(jnp.where(has_lo & has_hi, both, jnp.where(has_lo | has_hi, one_side, 0.0)))

    def from_params(self, p: Float[Array, " ndim"]) -> Float[Array, " ndim"]:
        has_lo, has_hi, lo, hi = self._sides()
        width = jnp.where(has_lo & has_hi, hi - lo, 1.0)
        frac = (p - lo) / width
        both = jnp.log(frac) - jnp.log1p(-frac)

        def inv_softplus(y):
            return y + jnp.log(-jnp.expm1(-y))

        lower_only = inv_softplus(jnp.where(has_lo, p - lo, 1.0))
        upper_only = inv_softplus(jnp.where(has_hi, hi - p, 1.0))
        return jnp.where(
            has_lo & has_hi, both, jnp.where(has_lo, lower_only, jnp.where(has_hi, upper_only, p))
        )
