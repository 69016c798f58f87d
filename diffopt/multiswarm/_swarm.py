"""ParticleSwarm: gradient-free minimisation with particles spread over MPI ranks."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .. import _comm
from .._keys import as_key
from ..optim._checkpoint import Checkpoint
from ..optim._checks import NonFiniteGuessError, check_path
from ..optim._loop import Chunk, run_loop
from ._groups import particles_of_group, split_into_groups
from ._loss import PerParticleLoss, VectorizedLoss, can_vectorize
from ._update import SwarmCoefficients, SwarmState, advance, initial_conditions

# The standard PSO constants (Clerc's, as in SPSO 2006/2011): w = 1/(2 ln 2),
# c = 1/2 + ln 2. With them the swarm contracts, whereas an inertial weight of
# 1 never damps the particles' oscillations and the swarm does not settle.
INERTIAL_WEIGHT = 0.5 / math.log(2.0)
COGNITIVE_WEIGHT = 0.5 + math.log(2.0)
SOCIAL_WEIGHT = 0.5 + math.log(2.0)
VMAX_FRAC = 0.4


class ParticleSwarm:
    """A particle swarm whose particles are divided among MPI ranks.

    Every rank holds the whole swarm state and applies the same update; each
    rank evaluates the loss only for its own particles, and the losses are
    gathered so the next step can be taken. Results are therefore identical
    on every rank, and for a given seed identical whatever the number of
    ranks.

    Parameters
    ----------
    nparticles : int
        Number of particles (~100 or more is typical).
    ndim : int
        Number of parameters being fitted.
    xlow, xhigh : float or array of shape (ndim,)
        Bounds of the search box. Particles reflect off its walls.
    seed : int or JAX PRNG key, default 0
        Seeds the initial positions (a latin hypercube), the initial
        velocities and every random factor of the updates (drawn on the host
        by a NumPy generator that every rank runs identically).
    inertial_weight : float, default 1/(2 ln 2) ~ 0.721
        Fraction of its velocity a particle keeps from one step to the next.
        Values of 1 or more do not damp the motion and the swarm never
        settles.
    cognitive_weight : float, default 1/2 + ln 2 ~ 1.193
        Strength of the pull towards the particle's own best position.
    social_weight : float, default 1/2 + ln 2 ~ 1.193
        Strength of the pull towards the swarm's best position.
    vmax_frac : float, default 0.4
        Largest step per dimension, as a fraction of the box width. Initial
        velocities are uniform within it.
    ranks_per_particle : int, optional
        Number of ranks that evaluate each particle together. Ranks are split
        into groups of this size, each with its own sub-communicator
        (:attr:`subcomm`), and every rank of a group calls the loss for the
        same particle, so the loss may itself be parallel over ``subcomm``.
        Must divide the number of ranks. By default each rank is its own
        group, or, with fewer particles than ranks, the ranks form one group
        per particle (see :func:`get_subcomm`).
    comm : MPI.Intracomm, optional
        Communicator whose ranks share the work (default ``MPI.COMM_WORLD``).

    Attributes
    ----------
    subcomm : MPI.Intracomm
        Communicator of this rank's group. Build a parallel loss on it.
    ranks_per_particle : int
        The size of this rank's group.
    num_groups, group_rank : int
        Number of groups and this rank's group.
    particles_on_this_rank : np.ndarray
        Indices of the particles this rank's group evaluates.
    x_init, v_init : np.ndarray of shape (nparticles, ndim)
        Starting positions and velocities. Set them to continue a run.
    random_state : dict
        State of the NumPy ``PCG64`` generator that the next run starts from.
    """

    def __init__(
        self,
        nparticles: int,
        ndim: int,
        xlow: float | Float[ArrayLike, " ndim"],
        xhigh: float | Float[ArrayLike, " ndim"],
        seed: int | jax.Array = 0,
        inertial_weight: float = INERTIAL_WEIGHT,
        cognitive_weight: float = COGNITIVE_WEIGHT,
        social_weight: float = SOCIAL_WEIGHT,
        vmax_frac: float = VMAX_FRAC,
        ranks_per_particle: int | None = None,
        comm: Any = None,
    ):
        self.nparticles = _positive_int(nparticles, "nparticles")
        self.ndim = _positive_int(ndim, "ndim")
        self.xlow = _bound(xlow, "xlow", self.ndim)
        self.xhigh = _bound(xhigh, "xhigh", self.ndim)
        if np.any(self.xlow >= self.xhigh):
            bad = np.flatnonzero(self.xlow >= self.xhigh).tolist()
            raise ValueError(
                f"xlow must be below xhigh in every dimension; not so in dimension(s) {bad} "
                f"(xlow={self.xlow.tolist()}, xhigh={self.xhigh.tolist()})"
            )
        self.inertial_weight = _nonnegative_float(inertial_weight, "inertial_weight")
        self.cognitive_weight = _nonnegative_float(cognitive_weight, "cognitive_weight")
        self.social_weight = _nonnegative_float(social_weight, "social_weight")
        self.vmax_frac = _nonnegative_float(vmax_frac, "vmax_frac")
        if self.vmax_frac == 0:
            raise ValueError("vmax_frac must be > 0: with no speed the particles cannot move")
        key = as_key(seed, "seed")

        self.comm = _comm.default_comm(comm)
        if ranks_per_particle is not None:
            ranks_per_particle = _positive_int(ranks_per_particle, "ranks_per_particle")
        self.subcomm, self.num_groups, self.group_rank = split_into_groups(
            self.nparticles, ranks_per_particle, self.comm
        )
        self.ranks_per_particle = self.subcomm.size
        self.particles_on_this_rank = particles_of_group(self.nparticles, self.num_groups, self.group_rank)

        self.vmax = self.vmax_frac * (self.xhigh - self.xlow)
        # An int seed and jax.random.key(seed) give the same swarm.
        entropy = np.asarray(jax.random.key_data(key), dtype=np.uint32).ravel().tolist()
        init_seed, steps_seed = np.random.SeedSequence(entropy).spawn(2)
        self.x_init, self.v_init = initial_conditions(
            init_seed, self.nparticles, self.xlow, self.xhigh, self.vmax
        )
        self.random_state: dict = np.random.PCG64(steps_seed).state
        self._evaluator_cache: tuple[Callable, bool | None, Callable] | None = None

    # -- running -------------------------------------------------------------

    def run_pso(
        self,
        lossfunc: Callable[[Float[np.ndarray, " ndim"]], float],
        nsteps: int = 100,
        progress: bool = True,
        keep_init_random_state: bool = False,
        *,
        vectorize: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
    ) -> dict[str, Any]:
        """Run the particle swarm optimisation.

        Step 0 evaluates the starting positions; each later step moves every
        particle once and evaluates it. Every step updates each particle's
        velocity from its inertia, a pull towards its own best position and a
        pull towards the swarm's best position (each with a uniform random
        factor per dimension), caps the speed at ``vmax_frac`` of the box
        width, and reflects particles off the walls.

        Parameters
        ----------
        lossfunc : callable
            ``lossfunc(x) -> float`` for a position ``x`` of shape ``(ndim,)``.
            With ``ranks_per_particle > 1`` every rank of a group calls it for
            the same particle, so it may communicate over :attr:`subcomm`.
        nsteps : int, default 100
            Number of steps (evaluations of the whole swarm).
        progress : bool, default True
            Show a progress bar (on rank 0 only).
        keep_init_random_state : bool, default False
            Leave :attr:`random_state` unchanged, so that calling again repeats
            this run exactly. By default it advances, and a second call draws
            new random factors.
        vectorize : bool, optional
            True evaluates this rank's particles in one ``jax.jit``-compiled
            ``jax.vmap`` of the loss; False calls the loss once per particle
            with a NumPy array. By default (None) the loss is vectorised when
            JAX can trace it and each particle has a single rank. It is never
            vectorised when ranks share particles.
        checkpoint : str or path, optional
            File where rank 0 saves the run every ``checkpoint_every`` steps and
            at the end. If it exists, the run resumes from it; a checkpoint of
            another problem (other particles, dimensions or box) is refused.
        checkpoint_every : int, default 10
            Steps between checkpoints.

        Returns
        -------
        dict
            ``"swarm_x_history"`` : np.ndarray of shape (nsteps, nparticles, ndim)
                Position of every particle at every step.
            ``"swarm_v_history"`` : np.ndarray of shape (nsteps, nparticles, ndim)
                Velocity each particle will move with after that step.
            ``"swarm_loss_history"`` : np.ndarray of shape (nsteps, nparticles)
                Loss of every particle at every step.
            ``"runtime"`` : float
                Wall time of the run in seconds, on this rank.

            The histories are identical on every rank.

        Raises
        ------
        diffopt.optim.NonFiniteGuessError
            A ``ValueError``, on every rank, if the loss is not finite at any
            of the starting particles. Non-finite losses of some particles
            are fine: they never count as an improvement.
        """
        if not callable(lossfunc):
            raise TypeError(f"lossfunc must be callable, got {type(lossfunc).__name__}")
        nsteps = _positive_int(nsteps, "nsteps")
        checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
        check_path("checkpoint", checkpoint)
        if vectorize not in (None, True, False):
            raise TypeError(f"vectorize must be None, True or False, got {vectorize!r}")
        if vectorize and self.num_groups < self.comm.size:
            raise ValueError(
                "vectorize=True cannot be used when ranks share particles (ranks_per_particle "
                "> 1, or fewer particles than ranks): every rank of a group evaluates the "
                "same particle, one at a time"
            )
        evaluate = self._evaluator(lossfunc, vectorize)
        dtype = _float_dtype()
        coeffs = self._coefficients(dtype)
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = self.random_state
        shape = (2, self.nparticles, self.ndim)

        def run_steps(state: _LoopState, start: int, stop: int) -> Chunk:
            rows = []
            for step in range(start, stop):
                swarm = state.swarm
                if step > 0:
                    swarm = advance(swarm, state.losses, rng.random(shape).astype(dtype), coeffs)
                losses = self._gather(evaluate(swarm.x))
                if step == 0 and not np.any(np.isfinite(losses)):
                    raise NonFiniteGuessError(
                        f"PSO: the loss is not finite at any of the {self.nparticles} starting "
                        f"particles (e.g. {losses[0]} at {np.asarray(swarm.x[0]).tolist()}); check "
                        "the loss and the box: nothing was searched"
                    )
                state = _LoopState(swarm, jnp.asarray(losses, dtype))
                rows.append((np.asarray(swarm.x), np.asarray(swarm.v), losses))
            names = ("swarm_x_history", "swarm_v_history", "swarm_loss_history")
            records = {name: np.stack([row[i] for row in rows]) for i, name in enumerate(names)}
            return Chunk(state, records, stop, False)

        def restore(random_state):
            rng.bit_generator.state = random_state

        saving = None
        if checkpoint is not None:
            saving = Checkpoint(checkpoint, checkpoint_every, "diffopt.multiswarm", self._problem())
        started = time.perf_counter()
        initial = _LoopState(self._initial_state(dtype), jnp.full(self.nparticles, jnp.inf, dtype))
        _, history, _, _ = run_loop(
            run_steps, initial, nsteps, desc="PSO", progress=progress, comm=self.comm,
            checkpoint=saving, extra=lambda: rng.bit_generator.state, restore=restore,
        )
        runtime = time.perf_counter() - started
        if not keep_init_random_state:
            self.random_state = rng.bit_generator.state
        return {**{name: rows.astype(dtype) for name, rows in history.items()}, "runtime": runtime}

    # -- pieces of a run ----------------------------------------------------------

    def _initial_state(self, dtype) -> SwarmState:
        x = self._checked_init("x_init", dtype)
        v = self._checked_init("v_init", dtype)
        # Every rank updates the whole swarm: its start must be the same everywhere.
        _comm.check_replicated(
            np.concatenate([np.asarray(x).ravel(), np.asarray(v).ravel()]),
            "the swarm's start (x_init and v_init, drawn from seed)", self.comm,
        )
        _comm.check_replicated(json.dumps(self.random_state), "random_state (drawn from seed)", self.comm)
        return SwarmState(x=x, v=v, best_x=x, best_loss=jnp.full(self.nparticles, jnp.inf, dtype))

    def _checked_init(self, name: str, dtype) -> jax.Array:
        value = np.asarray(getattr(self, name), dtype=dtype)
        if value.shape != (self.nparticles, self.ndim):
            raise ValueError(
                f"{name} must have shape (nparticles, ndim) = {(self.nparticles, self.ndim)}, "
                f"got {value.shape}"
            )
        return jnp.asarray(value)

    def _coefficients(self, dtype) -> SwarmCoefficients:
        return SwarmCoefficients(
            *(jnp.asarray(a, dtype) for a in (self.xlow, self.xhigh, self.vmax)),
            *(
                jnp.asarray(w, dtype)
                for w in (self.inertial_weight, self.cognitive_weight, self.social_weight)
            ),
        )

    def _evaluator(self, lossfunc: Callable, vectorize: bool | None):
        """This rank's loss evaluator, reused across runs so a rerun does not recompile."""
        if self._evaluator_cache is not None:
            cached_loss, cached_request, evaluator = self._evaluator_cache
            if cached_loss is lossfunc and cached_request == vectorize:
                return evaluator
        use_vmap = vectorize
        if use_vmap is None:
            use_vmap = self.num_groups == self.comm.size and can_vectorize(
                lossfunc, self.ndim, _float_dtype()
            )
        mine = self.particles_on_this_rank
        start, stop = (int(mine[0]), int(mine[-1]) + 1) if len(mine) else (0, 0)
        evaluator = (VectorizedLoss if use_vmap else PerParticleLoss)(lossfunc, start, stop)
        self._evaluator_cache = (lossfunc, vectorize, evaluator)
        return evaluator

    def _gather(self, local_losses: np.ndarray) -> np.ndarray:
        """The losses of the whole swarm, in particle order, on every rank."""
        if self.comm.size == 1:
            return local_losses
        # Within a group every rank evaluated the same particles: take the first's.
        is_first_of_group = self.subcomm.rank == 0
        parts = _comm.allgather((is_first_of_group, local_losses), comm=self.comm)
        return np.concatenate([losses for first, losses in parts if first])

    def _record(history: dict, step: int, state: SwarmState, losses) -> None:
        history["swarm_x_history"][step] = state.x
        history["swarm_v_history"][step] = state.v
        history["swarm_loss_history"][step] = losses

    def _problem(self) -> str:
        """What a checkpoint must match to be resumed by this swarm, in words."""
        return (
            f"nparticles={self.nparticles}; ndim={self.ndim}; xlow={self.xlow.tolist()}; "
            f"xhigh={self.xhigh.tolist()}"
        )


# -- helpers ----------------------------------------------------------------------


class _LoopState(NamedTuple):
    """The swarm, and the losses at its current positions (not yet in its bests)."""

    swarm: SwarmState
    losses: Float[Array, " nparticles"]



def _float_dtype():
    return jnp.zeros(0).dtype


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _nonnegative_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _bound(value: Any, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a number or an array of shape ({ndim},): {err}") from err
    if arr.ndim == 0:
        arr = np.full(ndim, arr)
    if arr.shape != (ndim,):
        raise ValueError(
            f"{name} must be a number or an array of shape (ndim,) = ({ndim},), got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr
