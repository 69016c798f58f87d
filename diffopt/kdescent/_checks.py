"""Argument checks shared by KPretrainer and KCalc (clear errors that name the argument)."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when the values of ``x`` can be inspected (not traced under jit)."""
    return not isinstance(x, jax.core.Tracer)


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def optional_positive_int(value: Any, name: str, default: int) -> int:
    return default if value is None else positive_int(value, name)


def real_number(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _float_dtype(arr) -> Any:
    # float64 input stays float64 only when x64 is enabled (no warning otherwise).
    if jnp.issubdtype(arr.dtype, jnp.floating):
        return jax.dtypes.canonicalize_dtype(arr.dtype)
    return jnp.result_type(float)


def points(x: Any, name: str, ndim: int | None = None) -> jax.Array:
    """``x`` as a float (n, d) array; (n,) is accepted when ``ndim`` is 1 (or unknown)."""
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array of shape (n_points, n_dims), got {type(x).__name__}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 1 and ndim in (None, 1):
        x = x[:, None]
    if x.ndim != 2:
        expected = "(n_points, n_dims)" if ndim is None else f"(n_points, {ndim})"
        raise ValueError(f"{name} must have shape {expected}, got shape {tuple(x.shape)}")
    if ndim is not None and x.shape[1] != ndim:
        raise ValueError(
            f"{name} has {x.shape[1]} dimensions (shape {tuple(x.shape)}) but the "
            f"pretrainer was trained on {ndim}-dimensional data"
        )
    return jnp.asarray(x, dtype=_float_dtype(x))


def weights(w: Any, n: int, name: str, dtype) -> jax.Array | None:
    """Per-point weights of length ``n`` (None passes through); concrete values must be >= 0."""
    if w is None:
        return None
    if isinstance(w, (list, tuple)):
        w = np.asarray(w)
    if not hasattr(w, "shape"):
        raise TypeError(f"{name} must be an array of shape ({n},) or None, got {type(w).__name__}")
    if tuple(w.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per point), got shape {tuple(w.shape)}")
    if is_concrete(w):
        arr = np.asarray(w)
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if arr.size and np.any(arr < 0):
            raise ValueError(f"{name} must be >= 0, found {int(np.sum(arr < 0))} negative value(s)")
    return jnp.asarray(w).astype(dtype)
