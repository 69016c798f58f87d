"""NUTS and HMC (blackjax's kernels) on any log-density, with the data split across MPI ranks.

Every rank holds the same parameters and key, so when the log-density sums
over ranks (``diffopt.sum_over_ranks``, or a ``multigrad`` model) it is the
same everywhere, every rank takes the same tree-building decisions, and the
chains are identical on every rank.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from .. import _comm
from .._keys import as_key
from ..optim._bounds import Reparam, check_inside, parse_bounds
from ..optim._checkpoint import Checkpoint
from ..optim._checks import (
    check_count, check_guess, check_path, check_positive, check_replicated_inputs, raise_nonfinite_guess,
)
from ..optim._flat import FlatSpec, unflatten, unflatten_rows
from ..optim._loop import compiled_init, compiled_steps, run_loop
from . import _adaptation


def _blackjax():
    """blackjax, imported when first used: importing it starts JAX's backends,
    which must wait until diffopt has given each MPI rank its GPU."""
    import blackjax.diagnostics
    import blackjax.mcmc.hmc
    import blackjax.mcmc.nuts

    return blackjax


class SamplerState(NamedTuple):
    """The state of all chains between two transitions.

    Attributes
    ----------
    chains : blackjax.mcmc.hmc.HMCState
        Position (in the unbounded variables), log-density and its gradient
        of each chain, stacked on a leading chain axis.
    adaptation : AdaptationState
        Each chain's warm-up state: its current step size and inverse mass
        matrix, and the estimates they come from.
    """

    chains: "blackjax.mcmc.hmc.HMCState"  # noqa: F821
    adaptation: _adaptation.AdaptationState


class SampleInfo(NamedTuple):
    """Diagnostics of a sampling run.

    Attributes
    ----------
    acceptance_rate : array (nchains,)
        Mean acceptance probability of each chain's transitions after warm-up.
    divergences : array (nchains,)
        Number of divergent transitions of each chain after warm-up.
    step_size : array (nchains,)
        The step size each chain adapted during warm-up.
    num_integration_steps : array (nchains,)
        Mean number of leapfrog steps per transition of each chain.
    rhat : pytree like guess
        Split-R-hat of each parameter over all chains (close to 1 when the
        chains agree; above ~1.01 they have not mixed).
    ess : pytree like guess
        Effective sample size of each parameter, all chains together.
    """

    acceptance_rate: Float[Array, " nchains"]
    divergences: Array
    step_size: Float[Array, " nchains"]
    num_integration_steps: Float[Array, " nchains"]
    rhat: PyTree
    ess: PyTree


class SampleResult(NamedTuple):
    """The draws of a sampling run.

    Attributes
    ----------
    samples : array (or pytree like guess)
        Draws of shape ``(nchains, nsamples, *guess_shape)`` (each leaf alike).
    logdensity : array (nchains, nsamples)
        The log-density of each draw (in the parameters given, without the
        Jacobian of the change of variables used for bounds).
    info : SampleInfo
        Per-chain acceptance, divergences and step size; R-hat and ESS per
        parameter.
    """

    samples: PyTree
    logdensity: Float[Array, "nchains nsamples"]
    info: SampleInfo


class _UnboundedLogDensity(eqx.Module):
    """The log-density in the sampler's unbounded variables ``z``, flat.

    ``p = reparam.to_params(z)``, and the log-Jacobian of that map is added,
    so that the draws of ``p`` follow ``logdensity_fn``.
    """

    logdensity_fn: Callable
    reparam: Reparam | None
    spec: FlatSpec = eqx.field(static=True)

    def params(self, z):
        return z if self.reparam is None else self.reparam.to_params(z)

    def in_params(self, z):
        return self.logdensity_fn(unflatten(self.params(z), self.spec))

    def __call__(self, z):
        out = self.in_params(z)
        return out if self.reparam is None else out + self.reparam.log_abs_det_jacobian(z)


class SamplerAlgorithm(eqx.Module):
    """NUTS or HMC with Stan's windowed warm-up, as a pure ``init`` and ``step``.

    Built by :func:`nuts` and :func:`hmc` (and usable directly in your own
    jitted loop): ``init(z0)`` gives the state of ``nchains`` chains
    starting at the flat unbounded position ``z0``, and ``step(state, t,
    key)`` makes transition ``t`` of every chain (adapting the step size and
    mass matrix while ``t < nwarmup``).
    """

    logdensity: _UnboundedLogDensity
    schedule: _adaptation.Schedule
    nchains: int = eqx.field(static=True)
    kernel: str = eqx.field(static=True)
    num_integration_steps: int = eqx.field(static=True)
    max_num_doublings: int = eqx.field(static=True)
    target_acceptance_rate: float = eqx.field(static=True)
    dense_mass_matrix: bool = eqx.field(static=True)

    def init(self, z0: Float[Array, " n"]) -> SamplerState:
        """Every chain at ``z0``, with a step size of 1 and a unit mass matrix."""
        z = jnp.broadcast_to(z0, (self.nchains, *z0.shape))
        chains = jax.vmap(lambda p: _blackjax().mcmc.hmc.init(p, self.logdensity))(z)
        adaptation = jax.vmap(
            lambda p: _adaptation.init(p, 1.0, self.target_acceptance_rate, self.dense_mass_matrix))(z)
        return SamplerState(chains, adaptation)

    def _transition(self, key, chain, adaptation):
        if self.kernel == "nuts":
            kernel = _blackjax().mcmc.nuts.build_kernel()
            return kernel(key, chain, self.logdensity, adaptation.step_size, adaptation.inverse_mass_matrix,
                          max_num_doublings=self.max_num_doublings)
        kernel = _blackjax().mcmc.hmc.build_kernel()
        return kernel(key, chain, self.logdensity, adaptation.step_size, adaptation.inverse_mass_matrix,
                      self.num_integration_steps)

    def step(self, state: SamplerState, t: Array, key: Array) -> tuple[SamplerState, dict]:
        """Transition ``t`` of every chain (key split per chain), then the warm-up update."""
        keys = jax.random.split(jax.random.fold_in(key, t), self.nchains)

        def one_chain(key, chain, adaptation):
            chain, info = self._transition(key, chain, adaptation)
            adaptation = _adaptation.update(adaptation, t, self.schedule, chain.position,
                                            info.acceptance_rate, self.target_acceptance_rate)
            return chain, adaptation, info

        chains, adaptation, info = jax.vmap(one_chain)(keys, state.chains, state.adaptation)
        z = chains.position
        record = {
            "params": jax.vmap(self.logdensity.params)(z),
            "logdensity": jax.vmap(self.logdensity.in_params)(z),
            "acceptance": info.acceptance_rate,
            "divergent": info.is_divergent,
            "steps": jnp.asarray(info.num_integration_steps, z.dtype),
        }
        return SamplerState(chains, adaptation), record


class _SamplerLoopStep(eqx.Module):
    algorithm: SamplerAlgorithm
    base_key: Array

    def __call__(self, state: SamplerState, t) -> tuple[SamplerState, dict, Bool[Array, ""]]:
        state, record = self.algorithm.step(state, t, self.base_key)
        ok = jnp.all(jnp.isfinite(state.chains.position)) & jnp.all(jnp.isfinite(state.chains.logdensity))
        return state, record, ok


def _sample(
    kernel: str,
    logdensity_fn: Callable,
    guess: PyTree,
    nsamples: int,
    *,
    nwarmup: int,
    nchains: int,
    param_bounds: Any,
    randkey: Any,
    progress: bool,
    checkpoint: Any,
    checkpoint_every: int,
    comm: Any,
    target_acceptance_rate: float,
    dense_mass_matrix: bool,
    num_integration_steps: int = 0,
    max_num_doublings: int = 10,
) -> SampleResult:
    nsamples = check_count("nsamples", nsamples, minimum=1)
    nwarmup = check_count("nwarmup", nwarmup)
    nchains = check_count("nchains", nchains, minimum=1)
    checkpoint_every = check_count("checkpoint_every", checkpoint_every, minimum=1)
    check_path("checkpoint", checkpoint)
    if not callable(logdensity_fn):
        raise TypeError(f"logdensity_fn must be callable, got {type(logdensity_fn).__name__}")
    target_acceptance_rate = check_positive("target_acceptance_rate", target_acceptance_rate)
    if not target_acceptance_rate < 1:
        raise ValueError(f"target_acceptance_rate must be between 0 and 1, got {target_acceptance_rate}")
    comm = _comm.default_comm(comm)
    guess, flat_guess, spec = check_guess(guess)
    if not jnp.issubdtype(flat_guess.dtype, jnp.floating):
        flat_guess = flat_guess.astype(jnp.result_type(float))
    bounds = parse_bounds(param_bounds, flat_guess.size)
    reparam = None
    if bounds is not None:
        check_inside(np.asarray(flat_guess), bounds)
        reparam = Reparam(jnp.asarray(bounds[0], flat_guess.dtype), jnp.asarray(bounds[1], flat_guess.dtype))
    key = as_key(0 if randkey is None else randkey)
    check_replicated_inputs(np.asarray(flat_guess), key, comm)
    logdensity = _UnboundedLogDensity(logdensity_fn, reparam, spec)
    out = jax.eval_shape(logdensity_fn, guess)
    if getattr(out, "shape", None) != ():
        raise TypeError(
            "logdensity_fn must return a scalar (the log-density at params); got "
            + (f"shape {out.shape}" if hasattr(out, "shape") else type(out).__name__)
        )

    algorithm = SamplerAlgorithm(
        logdensity, _adaptation.schedule(nwarmup), nchains, kernel, num_integration_steps,
        max_num_doublings, target_acceptance_rate, bool(dense_mass_matrix),
    )
    z0 = flat_guess if reparam is None else reparam.from_params(flat_guess)
    state = compiled_init(algorithm, z0)
    start = float(state.chains.logdensity[0])
    if not (math.isfinite(start) and np.all(np.isfinite(np.asarray(state.chains.logdensity_grad[0])))):
        raise_nonfinite_guess(f"{kernel.upper()} sampling", start, "log-density")

    loop_step = _SamplerLoopStep(algorithm, key)
    saving = None
    if checkpoint is not None:
        problem = (
            f"{nchains} chain(s) of {flat_guess.size} {flat_guess.dtype} parameters; {kernel} "
            + (f"(max_num_doublings={max_num_doublings})" if kernel == "nuts"
               else f"(num_integration_steps={num_integration_steps})")
            + f"; {nwarmup} warm-up steps; target acceptance {target_acceptance_rate}; "
            + ("dense" if dense_mass_matrix else "diagonal") + " mass matrix; "
            + ("no bounds" if bounds is None else f"bounds {np.asarray(bounds).T.tolist()}")
        )
        saving = Checkpoint(checkpoint, checkpoint_every, "diffopt sampler", problem,
                            np.asarray(jax.random.key_data(key)))
    state, history, done, stopped = run_loop(
        *compiled_steps(loop_step, state), nwarmup + nsamples,
        desc=f"{kernel.upper()} ({nwarmup} warm-up, {nsamples} draws)", progress=progress, comm=comm,
        checkpoint=saving,
    )
    if stopped:
        raise FloatingPointError(
            f"{kernel.upper()} sampling: a chain reached a non-finite position or log-density at "
            f"transition {done}; check the log-density (and its gradient) there"
        )
    return _result(history, state, nwarmup, spec, isinstance(guess, jax.Array))


def _result(history: dict, state: SamplerState, nwarmup: int, spec: FlatSpec, like_array: bool) -> SampleResult:
    draws = {name: np.swapaxes(rows[nwarmup:], 0, 1) for name, rows in history.items()}  # (nchains, nsamples, ...)
    samples = unflatten_rows(draws["params"], spec, like_array)
    rhat, ess = _diagnostics(draws["params"])
    info = SampleInfo(
        acceptance_rate=jax.device_put(draws["acceptance"].mean(axis=1)),
        divergences=jax.device_put(draws["divergent"].sum(axis=1)),
        step_size=state.adaptation.step_size,
        num_integration_steps=jax.device_put(draws["steps"].mean(axis=1)),
        rhat=unflatten_rows(rhat, spec, like_array),
        ess=unflatten_rows(ess, spec, like_array),
    )
    return SampleResult(samples, jax.device_put(draws["logdensity"]), info)


def _diagnostics(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split-R-hat and ESS per parameter of ``(nchains, nsamples, n)`` draws (NaN if too few)."""
    nchains, nsamples, n = draws.shape
    if nsamples < 4:
        return np.full(n, np.nan), np.full(n, np.nan)
    rhat, ess = _split_rhat_and_ess(jax.device_put(draws))
    return np.asarray(rhat).reshape(n), np.asarray(ess).reshape(n)


@jax.jit
def _split_rhat_and_ess(draws):
    half = draws.shape[1] // 2
    split = jnp.concatenate([draws[:, :half], draws[:, half:2 * half]], axis=0)
    diagnostics = _blackjax().diagnostics
    return diagnostics.potential_scale_reduction(split), diagnostics.effective_sample_size(draws)


_COMMON_DOC = """
    Parameters
    ----------
    logdensity_fn : callable
        ``logdensity_fn(params) -> scalar``, traceable by JAX: the log of the
        (unnormalised) posterior density. For data split across MPI ranks,
        sum the ranks' parts with :func:`diffopt.sum_over_ranks` (after
        :func:`diffopt.replicate` on the parameters), or use
        ``OnePointModel.run_nuts``.
    guess : array-like or pytree of arrays
        Where every chain starts, identical on every rank (the array-like
        rule of :func:`diffopt.optim.fit` applies).
    nsamples : int
        Draws per chain, after warm-up.
    nwarmup : int (default=500)
        Warm-up transitions per chain (Stan's windowed adaptation of the step
        size and a diagonal inverse mass matrix); they are not returned.
    nchains : int (default=1)
        Chains, run side by side with ``jax.vmap`` in the same compiled loop,
        each adapting its own step size and mass matrix.
    param_bounds : Sequence, optional
        ``(lower, upper)`` per flattened parameter (None or +-inf for an open
        side). Bounded parameters are sampled through the same smooth change
        of variables as the fits, with its log-Jacobian added, so the draws
        follow ``logdensity_fn`` in the parameters given.
    randkey : int | PRNG key (default=0)
        Seeds every transition; identical on every rank.
    progress : bool (default=True)
        Show a progress bar on rank 0.
    checkpoint : str, optional
        Path of a checkpoint file: rank 0 saves the chains every
        ``checkpoint_every`` transitions, and a later call with the same
        path resumes (bit for bit the draws of an uninterrupted run), or with
        a larger ``nsamples``, extends the chains.
    checkpoint_every : int (default=100)
        Transitions between checkpoints.
    comm : MPI.Intracomm, optional
        The ranks taking part (for the progress bar, checkpoints and the
        check that guess and key agree across ranks).
    target_acceptance_rate : float (default=0.8)
        What the step-size adaptation aims at.
    dense_mass_matrix : bool (default=False)
        Adapt a dense inverse mass matrix (the draws' covariance) instead of
        a diagonal one: far fewer leapfrog steps when parameters are
        strongly correlated, at ``O(n^2)`` memory and work per step."""

_RETURNS_DOC = """
    Returns
    -------
    SampleResult
        ``(samples, logdensity, info)``: draws of shape ``(nchains,
        nsamples, *guess_shape)``, their log-densities, and diagnostics
        (acceptance rate, divergences and step size per chain, split-R-hat and
        ESS per parameter).

    Raises
    ------
    NonFiniteGuessError
        A ``ValueError``, on every rank, if the log-density or its gradient
        is not finite at the guess (before any warm-up).
    """


def nuts(
    logdensity_fn: Callable,
    guess: PyTree,
    nsamples: int,
    *,
    nwarmup: int = 500,
    nchains: int = 1,
    param_bounds: Any = None,
    randkey: Any = 0,
    progress: bool = True,
    checkpoint: str | None = None,
    checkpoint_every: int = 100,
    comm: Any = None,
    target_acceptance_rate: float = 0.8,
    dense_mass_matrix: bool = False,
    max_num_doublings: int = 10,
) -> SampleResult:
    return _sample(
        "nuts", logdensity_fn, guess, nsamples, nwarmup=nwarmup, nchains=nchains, param_bounds=param_bounds,
        randkey=randkey, progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        comm=comm, target_acceptance_rate=target_acceptance_rate, dense_mass_matrix=dense_mass_matrix,
        max_num_doublings=check_count("max_num_doublings", max_num_doublings, minimum=1),
    )


def hmc(
    logdensity_fn: Callable,
    guess: PyTree,
    nsamples: int,
    *,
    num_integration_steps: int = 16,
    nwarmup: int = 500,
    nchains: int = 1,
    param_bounds: Any = None,
    randkey: Any = 0,
    progress: bool = True,
    checkpoint: str | None = None,
    checkpoint_every: int = 100,
    comm: Any = None,
    target_acceptance_rate: float = 0.8,
    dense_mass_matrix: bool = False,
) -> SampleResult:
    return _sample(
        "hmc", logdensity_fn, guess, nsamples, nwarmup=nwarmup, nchains=nchains, param_bounds=param_bounds,
        randkey=randkey, progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        comm=comm, target_acceptance_rate=target_acceptance_rate, dense_mass_matrix=dense_mass_matrix,
        num_integration_steps=check_count("num_integration_steps", num_integration_steps, minimum=1),
    )


nuts.__doc__ = (
    """Sample ``logdensity_fn`` with blackjax's NUTS, in one compiled loop.
""" + _COMMON_DOC + """
    max_num_doublings : int (default=10)
        Largest tree depth of a NUTS trajectory (at most ``2**10`` steps).
""" + _RETURNS_DOC
)
hmc.__doc__ = (
    """Sample ``logdensity_fn`` with blackjax's HMC (fixed trajectory length), in one compiled loop.
""" + _COMMON_DOC + """
    num_integration_steps : int (default=16)
        Leapfrog steps per transition.
""" + _RETURNS_DOC
)
