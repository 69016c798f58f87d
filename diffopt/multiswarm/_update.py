"""The particle swarm update: pure, jittable functions of the whole swarm.

Every rank runs these on the *whole* swarm with the same inputs, so the swarm
state stays identical on all ranks without being communicated. Only the
losses, which each rank computes for its own particles, cross ranks.

The random factors come from a NumPy generator on the host, which every rank
runs identically: a JAX PRNG inside the step would cost about a second of
compilation on CPU for a step that runs in a fraction of a millisecond.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class SwarmState(NamedTuple):
    """Everything that evolves during a particle swarm run.

    Attributes
    ----------
    x : Array of shape (nparticles, ndim)
        Current positions.
    v : Array of shape (nparticles, ndim)
        Velocities that will move the particles on the next step.
    best_x : Array of shape (nparticles, ndim)
        Best position each particle has visited (its personal best).
    best_loss : Array of shape (nparticles,)
        Loss at ``best_x`` (``inf`` before the first evaluation).
    """

    x: Float[Array, "nparticles ndim"]
    v: Float[Array, "nparticles ndim"]
    best_x: Float[Array, "nparticles ndim"]
    best_loss: Float[Array, " nparticles"]


class SwarmCoefficients(NamedTuple):
    """Box and weights of the update, as arrays.

    Held as arrays rather than Python floats so that one compilation of
    :func:`advance` serves every swarm with the same shapes.
    """

    xlow: Float[Array, " ndim"]
    xhigh: Float[Array, " ndim"]
    vmax: Float[Array, " ndim"]
    inertial_weight: Float[Array, ""]
    cognitive_weight: Float[Array, ""]
    social_weight: Float[Array, ""]


def record_losses(state: SwarmState, losses: Float[Array, " nparticles"]) -> SwarmState:
    """Update the personal bests with the losses at the current positions.

    A NaN loss never counts as an improvement.
    """
    losses = jnp.where(jnp.isnan(losses), jnp.inf, losses).astype(state.best_loss.dtype)
    improved = losses < state.best_loss
    return state._replace(
        best_x=jnp.where(improved[:, None], state.x, state.best_x),
        best_loss=jnp.where(improved, losses, state.best_loss),
    )


def swarm_best(state: SwarmState) -> tuple[Float[Array, " ndim"], Float[Array, ""]]:
    """The best position found by any particle so far, and its loss."""
    i = jnp.argmin(state.best_loss)
    return state.best_x[i], state.best_loss[i]


def move(
    state: SwarmState, uniforms: Float[Array, "2 nparticles ndim"], coeffs: SwarmCoefficients
) -> SwarmState:
    """Accelerate every particle, cap its speed, then move it inside the box.

    The new velocity keeps ``inertial_weight`` of the old one and is pulled
    towards the particle's own best and the swarm's best position, scaled by
    the uniform random factors ``uniforms[0]`` and ``uniforms[1]`` (one per
    particle and dimension).
    Particles that would leave the box are mirrored back off the wall, and
    the velocity component normal to that wall is reversed.
    """
    u_cognitive, u_social = uniforms
    best_x, _ = swarm_best(state)
    v = (
        coeffs.inertial_weight * state.v
        + coeffs.cognitive_weight * u_cognitive * (state.best_x - state.x)
        + coeffs.social_weight * u_social * (best_x - state.x)
    )
    v = jnp.clip(v, -coeffs.vmax, coeffs.vmax)

    x = state.x + v
    below, above = x < coeffs.xlow, x > coeffs.xhigh
    x = jnp.where(below, 2 * coeffs.xlow - x, x)
    x = jnp.where(above, 2 * coeffs.xhigh - x, x)
    v = jnp.where(below | above, -v, v)
    # A step longer than the box (vmax_frac > 1) could overshoot the far wall.
    x = jnp.clip(x, coeffs.xlow, coeffs.xhigh)
    return state._replace(x=x, v=v)


@jax.jit
def advance(
    state: SwarmState,
    losses: Float[Array, " nparticles"],
    uniforms: Float[Array, "2 nparticles ndim"],
    coeffs: SwarmCoefficients,
) -> SwarmState:
    """Record the losses at the current positions, then take one step."""
    return move(record_losses(state, losses), uniforms, coeffs)



def initial_conditions(
    seed_sequence: np.random.SeedSequence,
    nparticles: int,
    xlow: np.ndarray,
    xhigh: np.ndarray,
    vmax: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Latin-hypercube positions and uniform velocities in ``[-vmax, vmax]``.

    Both are float64 arrays of shape ``(nparticles, ndim)`` that depend only
    on ``seed_sequence``, so every rank draws the same ones.
    """
    from scipy.stats import qmc

    lhs_seed, v_seed = seed_sequence.spawn(2)
    ndim = xlow.shape[0]
    unit_cube = _latin_hypercube(ndim, np.random.default_rng(lhs_seed)).random(nparticles)
    x = qmc.scale(unit_cube, xlow, xhigh)
    u = np.random.default_rng(v_seed).random((nparticles, ndim))
    return x, (2 * u - 1) * vmax


def _latin_hypercube(ndim: int, rng: np.random.Generator):
    from scipy.stats import qmc

    try:
        return qmc.LatinHypercube(ndim, rng=rng)
    except TypeError:  # SciPy < 1.15 names the argument ``seed``
        return qmc.LatinHypercube(ndim, seed=rng)
