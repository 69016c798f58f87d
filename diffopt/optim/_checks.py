"""Argument checks shared by the optimisers (errors name the argument)."""

from __future__ import annotations

import numbers
import os

import jax
import numpy as np

from jaxtyping import PyTree

from .. import _comm
from .._params import as_params
from ._flat import FlatSpec, flatten


class NonFiniteGuessError(ValueError):
    """The loss or its gradient is not finite at the starting point of a fit.

    Raised on every rank alike (the loss is the same on every rank), before
    any step is taken: there is nothing to return but the guess itself.
    """


def raise_nonfinite_guess(desc: str, value, what: str = "loss") -> None:
    """Raise :class:`NonFiniteGuessError`: a fit's (or sampler's) first ``what`` or its gradient is not finite."""
    raise NonFiniteGuessError(
        f"{desc}: the {what} or its gradient is not finite at the guess ({what} = {value}); "
        "check the data and the guess: nothing was run"
    )


def check_count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return float(value)


def check_guess(guess, name: str = "guess") -> tuple[PyTree, jax.Array, FlatSpec]:
    """Read initial parameters (see :mod:`diffopt._params`) and flatten them.

    Returns the guess as an array or a pytree of arrays, and its flat vector
    and spec. It must be a non-empty pytree of finite real numbers.
    """
    guess = as_params(guess, name)
    flat, spec = flatten(guess)
    if flat.size == 0:
        raise ValueError(f"{name} is empty: there are no parameters to fit")
    host = np.asarray(flat)
    bad = np.flatnonzero(~np.isfinite(host))
    if bad.size:
        raise ValueError(f"{name} must be finite; parameter {int(bad[0])} is {host[bad[0]]}")
    return guess, flat, spec


def check_replicated_inputs(flat_guess: np.ndarray, key, comm) -> None:
    """The guess and key must be the same on every rank, or the ranks' parameters drift apart."""
    _comm.check_replicated(flat_guess, "guess", comm)
    if key is not None:
        _comm.check_replicated(np.asarray(jax.random.key_data(key)), "randkey", comm)


def check_path(name: str, value) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike) or None, got {type(value).__name__}")
