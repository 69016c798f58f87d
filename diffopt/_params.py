"""What a ``params`` (or ``guess``) argument is: an array, or a pytree of arrays.

The rule, shared by every entry point that takes parameters:

- Anything NumPy reads as one numeric array is an array: a JAX or NumPy
  array, a Python number, or a list, tuple or ``NamedTuple`` of numbers (or
  of equal-shape arrays). Gradients come back as arrays of its shape, and
  fit histories as arrays of shape ``(nsteps + 1, *shape)``. Sequences of
  Python numbers become arrays of the default float dtype.
- Anything else (dicts, ``equinox.Module``\\ s, tuples of arrays of different
  shapes, ...) is a pytree, and keeps its structure: every leaf becomes an
  array.

So ``ParamTuple(log_shmrat=-2.0, sigma_logsm=0.2)`` is the array ``[-2.0,
0.2]``, as it was for diffopt 2.0, while ``{"a": 1.0, "b": jnp.zeros(3)}``
is a pytree.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PyTree

__all__ = ["as_params"]


def _sequence_as_array(params: list | tuple) -> jax.Array | None:
    """``params`` as one numeric array, or None if it is not rectangular and numeric."""
    try:
        arr = jnp.asarray(params)
    except (TypeError, ValueError):
        return None
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        return None
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _leaf_as_array(x: Any, name: str) -> jax.Array:
    dtype = getattr(x, "dtype", None)
    if dtype is None and isinstance(x, (int, float)) and not isinstance(x, bool):
        return jnp.asarray(x, dtype=jnp.result_type(float))
    real = dtype is not None and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    if not real:
        raise TypeError(
            f"{name} must be an array (or a pytree of arrays) of real numbers, got "
            f"{type(x).__name__}" + (f" of dtype {dtype}" if dtype is not None else "")
        )
    return jnp.asarray(x)


def as_params(params: PyTree, name: str = "params") -> PyTree:
    """``params`` as an array if it reads as one, else as a pytree of arrays.

    Python scalars become arrays, so that a jitted function is traced once
    per shape, not once per value. Anything but real numbers (booleans,
    complex numbers, strings...) is a ``TypeError`` that names the argument.
    """
    if isinstance(params, (list, tuple)):
        arr = _sequence_as_array(params)
        if arr is not None:
            return arr
    return jax.tree_util.tree_map(lambda x: _leaf_as_array(x, name), params)
