"""Normalising the ``randkey`` arguments accepted across diffopt."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_key(x: Any) -> bool:
    """True for a typed PRNG key or a legacy ``uint32[2]`` key."""
    if not isinstance(x, (jax.Array, np.ndarray)):
        return False
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return x.ndim == 0
    return x.dtype == jnp.uint32 and x.shape == (2,)


def as_key(randkey: Any, name: str = "randkey", required: bool = False) -> jax.Array | None:
    """Return ``randkey`` as a PRNG key: an int seeds a new key, a key passes through.

    ``None`` stays ``None`` (no randomness requested) unless ``required``.
    """
    if randkey is None:
        if required:
            raise TypeError(f"{name} is required: pass an int seed or a JAX PRNG key")
        return None
    if isinstance(randkey, (int, np.integer)) and not isinstance(randkey, bool):
        return jax.random.key(int(randkey))
    if isinstance(randkey, jax.core.Tracer) or is_key(randkey):
        return randkey
    raise TypeError(
        f"{name} must be None, an int seed or a JAX PRNG key "
        f"(jax.random.key(...)); got {type(randkey).__name__}"
        + (f" with dtype {randkey.dtype} and shape {randkey.shape}" if hasattr(randkey, "dtype") else "")
    )


def key_kwargs(randkey: Any) -> dict:
    """``{"randkey": key}`` when a key is given, else ``{}``: user methods need not accept it."""
    return {} if randkey is None else {"randkey": randkey}
