"""Stan's windowed warm-up, one step at a time, for chunked and resumable sampling.

blackjax's ``window_adaptation`` runs the whole warm-up as one ``lax.scan``.
To run it in chunks (progress bar, checkpoints) its pieces are arranged here
as a pure ``init``/``update`` over a state: blackjax's dual averaging tunes
the step size towards the target acceptance rate, and a diagonal (or dense)
inverse mass matrix is estimated from the positions of each slow window
(Welford's running (co)variance, shrunk as Stan does, but towards ``1e-3``
of its own variances rather than of the identity: scale-free). The window
schedule follows blackjax's ``build_schedule``, packed into fixed-size
arrays so that the compiled step does not depend on the number of warm-up
steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

# More slow windows than any warm-up has: each is twice the one before.
_MAX_WINDOWS = 64


class Schedule(NamedTuple):
    """When the mass matrix is estimated (``slow_start <= t < slow_stop``) and updated."""

    slow_start: Int[Array, ""]
    slow_stop: Int[Array, ""]
    window_ends: Int[Array, " windows"]  # steps ending a slow window; -1 pads
    nwarmup: Int[Array, ""]


def schedule(nwarmup: int) -> Schedule:
    """Stan's schedule of ``nwarmup`` steps, as fixed-size arrays.

    A fast interval (75 steps) adapts the step size alone, then slow windows
    of doubling length (from 25) also estimate the mass matrix, the last one
    stretched to meet a final fast interval (50 steps). Short warm-ups scale
    the three to 15%, 75% and 10%; under 20 steps, only the step size adapts.
    (The rules of blackjax's ``build_schedule``, computed with NumPy: it
    compiles nothing.)
    """
    window_ends = np.full(_MAX_WINDOWS, -1)
    start = stop = 0
    if nwarmup >= 20:
        initial, first, final = 75, 25, 50
        if initial + first + final > nwarmup:
            initial, final = int(0.15 * nwarmup), int(0.1 * nwarmup)
            first = nwarmup - initial - final
        start, stop = initial, nwarmup - final
        ends, begin, size = [], initial, first
        while begin < stop:
            if 3 * size <= stop - begin:
                end, size = begin + size, 2 * size
            else:
                end = stop
            ends.append(end - 1)
            begin = end
        window_ends[: len(ends)] = ends
    return Schedule(*(jnp.asarray(np.asarray(a, np.int32)) for a in (start, stop, window_ends, nwarmup)))


class AdaptationState(NamedTuple):
    """Warm-up state of one chain.

    Attributes
    ----------
    dual_averaging : DualAveragingAdaptationState
        blackjax's step-size adaptation state.
    count, mean, m2 : arrays
        Welford's running count, mean and sum of squared deviations (or of
        outer products, for a dense mass matrix) of the positions in the
        current slow window.
    step_size : scalar array
        The step size to use for the next transition.
    inverse_mass_matrix : array (n,) or (n, n)
        The inverse mass matrix (diagonal, or dense) for the next transition.
    """

    dual_averaging: "blackjax.adaptation.step_size.DualAveragingAdaptationState"  # noqa: F821
    count: Float[Array, ""]
    mean: Float[Array, " n"]
    m2: Float[Array, "n ..."]
    step_size: Float[Array, ""]
    inverse_mass_matrix: Float[Array, "n ..."]


def _dual_averaging(target_acceptance_rate: float):
    # Imported when first used: importing blackjax starts JAX's backends, which
    # must wait until diffopt has given each MPI rank its GPU.
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    return dual_averaging_adaptation(target_acceptance_rate)


def init(
    position: Float[Array, " n"], initial_step_size: float, target_acceptance_rate: float, dense: bool = False
) -> AdaptationState:
    """The warm-up state before the first transition (a dense mass matrix if ``dense``)."""
    da_init, _, _ = _dual_averaging(target_acceptance_rate)
    n = position.shape[0]
    m2 = jnp.zeros((n, n) if dense else (n,), position.dtype)
    imm = jnp.eye(n, dtype=position.dtype) if dense else jnp.ones_like(position)
    step_size = jnp.asarray(initial_step_size, position.dtype)
    return AdaptationState(da_init(step_size), jnp.zeros((), position.dtype), jnp.zeros_like(position), m2,
                           step_size, imm)


def update(
    state: AdaptationState,
    t: Int[Array, ""],
    sched: Schedule,
    position: Float[Array, " n"],
    acceptance_rate: Float[Array, ""],
    target_acceptance_rate: float,
) -> AdaptationState:
    """The warm-up state after transition ``t`` (a no-op once ``t >= nwarmup``).

    Every warm-up step tunes the step size. In slow windows the position also
    enters the variance estimate; at the end of each slow window the inverse
    mass matrix becomes that (regularised) variance, the estimate restarts,
    and so does the step-size adaptation, from its averaged value. After the
    last warm-up step the step size is the dual-averaging average.
    """
    da_init, da_update, da_final = _dual_averaging(target_acceptance_rate)
    warming = t < sched.nwarmup
    slow = (t >= sched.slow_start) & (t < sched.slow_stop)
    window_end = jnp.any(sched.window_ends == t)

    da = da_update(state.dual_averaging, acceptance_rate)
    step_size = jnp.exp(da.log_step_size)

    # Welford's update, in slow windows only.
    dense = state.m2.ndim == 2
    count = state.count + slow
    delta = position - state.mean
    mean = jnp.where(slow, state.mean + delta / jnp.maximum(count, 1), state.mean)
    spread = jnp.outer(delta, position - mean) if dense else delta * (position - mean)
    m2 = jnp.where(slow, state.m2 + spread, state.m2)

    # End of a slow window: the regularised (co)variance, and fresh estimates.
    # Stan shrinks towards 1e-3 (times the identity); here towards 1e-3 of the
    # variances themselves, so that parameters far from unit scale keep their
    # scale (a floor of 1e-12 keeps a parameter that never moved movable).
    covariance = m2 / jnp.maximum(count - 1, 1)
    variances = jnp.diagonal(covariance) if dense else covariance
    ridge = 1e-3 * jnp.maximum(variances, 1e-12)
    regularised = (count / (count + 5)) * covariance + (5 / (count + 5)) * (jnp.diag(ridge) if dense else ridge)
    imm = jnp.where(window_end, regularised, state.inverse_mass_matrix)
    restarted = da_init(da_final(da))
    da = _where(window_end, restarted, da)
    step_size = jnp.where(window_end, jnp.exp(restarted.log_step_size), step_size)
    count, mean, m2 = (jnp.where(window_end, jnp.zeros_like(a), a) for a in (count, mean, m2))

    # After the last warm-up step: the averaged step size.
    last = t == sched.nwarmup - 1
    step_size = jnp.where(last, da_final(da), step_size)
    new = AdaptationState(da, count, mean, m2, step_size.astype(position.dtype), imm)
    return _where(warming, new, state)


def _where(pred: Bool[Array, ""], new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b).astype(b.dtype), new, old)
