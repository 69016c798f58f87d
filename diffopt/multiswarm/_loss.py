"""Evaluating the loss at the particles a rank is responsible for.

Two strategies: one compiled, vectorised call for all of this rank's
particles (``jax.vmap`` inside ``jax.jit``), or a plain Python loop calling
the loss once per particle. The loop serves losses that JAX cannot trace
(NumPy, SciPy, ``float(x)``...) and losses that are themselves parallel over
a sub-communicator, which every rank of the group must call together.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jaxtyping import Array, Float


def can_vectorize(lossfunc: Callable, ndim: int, dtype) -> bool:
    """Whether ``lossfunc`` can be traced by JAX on a position of shape ``(ndim,)``.

    Traces once, abstractly (``jax.eval_shape``): nothing is computed. Any
    failure to trace means "use the per-particle loop"; a loss that is
    genuinely broken then raises its own error on its first real call.

    Raises
    ------
    ValueError
        If the loss traces but does not return a scalar.
    """
    try:
        out = jax.eval_shape(lossfunc, jax.ShapeDtypeStruct((ndim,), dtype))
    except Exception:
        return False
    _check_scalar_output(out)
    return True


def _check_scalar_output(out) -> None:
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != ():
        raise ValueError(
            "lossfunc must return a scalar for a position of shape (ndim,); "
            f"got {type(out).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")
        )


class VectorizedLoss:
    """All of this rank's particles in one compiled call.

    Parameters
    ----------
    lossfunc : callable
        Traceable loss of one position of shape ``(ndim,)``.
    start, stop : int
        This rank's particles are ``x[start:stop]``.
    """

    def __init__(self, lossfunc: Callable, start: int, stop: int):
        self.lossfunc = lossfunc
        self.start, self.stop = start, stop
        batched = jax.vmap(lossfunc)
        self._evaluate = jax.jit(lambda x: batched(x[start:stop]))

    def __call__(self, x: Float[Array, "nparticles ndim"]) -> np.ndarray:
        if self.stop == self.start:
            return np.zeros(0, dtype=x.dtype)
        return np.asarray(self._evaluate(x), dtype=x.dtype)


class PerParticleLoss:
    """This rank's particles one at a time, with the loss called as given.

    Each particle's position is passed as a NumPy array of shape ``(ndim,)``.
    """

    def __init__(self, lossfunc: Callable, start: int, stop: int):
        self.lossfunc = lossfunc
        self.start, self.stop = start, stop

    def __call__(self, x: Float[Array, "nparticles ndim"]) -> np.ndarray:
        positions = np.asarray(x)[self.start : self.stop]
        losses = np.empty(len(positions), dtype=positions.dtype)
        for i, position in enumerate(positions):
            loss = self.lossfunc(position.copy())
            if np.ndim(loss) != 0:
                _check_scalar_output(np.asarray(loss))
            losses[i] = float(loss)
        return losses
