"""A compiled fit loop for any optax optimiser, with bounds, NaN stop and checkpoints."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PyTree

from .. import _comm
from .._keys import as_key
from ._bounds import Reparam, check_inside, parse_bounds
from ._checkpoint import checkpoint_problem, load_checkpoint, save_checkpoint
from ._checks import (
    check_count, check_guess, raise_nonfinite_guess, check_path, check_replicated_inputs,
)
from ._flat import flatten_like, unflatten
from ._progress import progress_bar


@functools.lru_cache(maxsize=32)
def cached_adam(learning_rate: float) -> optax.GradientTransformation:
    """``optax.adam(learning_rate)``, one object per rate, so repeated fits reuse the compiled loop."""
    return optax.adam(learning_rate)


class FitResult(NamedTuple):
    """History of a fit.

    Attributes
    ----------
    params : pytree of arrays
        Parameters at every recorded step, stacked on a leading axis (like
        ``guess`` otherwise). Row 0 is the guess and the last row the final
        parameters.
    losses : array
        Loss at the recorded steps (one fewer than ``params`` after a
        complete fit: the final parameters were not evaluated).
    aux : pytree or None
        Auxiliary loss output at the recorded steps, when ``has_aux``.
    """

    params: PyTree
    losses: Array
    aux: Any = None


class _LoopState(eqx.Module):
    z: Array
    opt_state: PyTree
    step: Array
    stopped: Array  # a non-finite loss or gradient was met


@dataclasses.dataclass
class _History:
    """What a fit records, as lists of chunks (joined only when saved or returned)."""

    params: list
    losses: list
    aux: list  # one list of chunks per aux leaf

    def stacked(self) -> dict:
        return {
            "params": np.concatenate(self.params),
            "losses": np.concatenate(self.losses),
            "aux": [np.concatenate(rows) for rows in self.aux],
        }


def _select(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


@eqx.filter_jit
def _run_chunk(loss_and_grad, optimizer, reparam, spec, base_key, const_randkey, has_aux,
               nsteps, chunk, state: _LoopState):
    uses_extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def key_at(t):
        if base_key is None:
            return None
        return base_key if const_randkey else jax.random.fold_in(base_key, t)

    def to_params(z):
        return z if reparam is None else reparam.to_params(z)

    def loss_and_grad_z(z, key):
        p_flat, pullback = jax.vjp(to_params, z)
        out, grad = loss_and_grad(unflatten(p_flat, spec), key)
        (g_z,) = pullback(flatten_like(grad, z.dtype))
        return out, g_z, p_flat

    def one_step(s: _LoopState, _):
        key = key_at(s.step)
        out, g_z, p_flat = loss_and_grad_z(s.z, key)
        loss, aux = out if has_aux else (out, None)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g_z))
        active = (s.step < nsteps) & ~s.stopped
        if uses_extra_args:
            def value_fn(z):
                o = loss_and_grad_z(z, key)[0]
                return o[0] if has_aux else o

            updates, opt_state = optimizer.update(
                g_z, s.opt_state, s.z, value=loss, grad=g_z, value_fn=value_fn
            )
        else:
            updates, opt_state = optimizer.update(g_z, s.opt_state, s.z)
        go = finite & active
        new = _LoopState(
            z=jnp.where(go, optax.apply_updates(s.z, updates), s.z),
            opt_state=_select(go, opt_state, s.opt_state),
            step=jnp.where(go, s.step + 1, s.step),
            stopped=s.stopped | (active & ~finite),
        )
        return new, (p_flat, loss, aux, go)

    state, record = jax.lax.scan(one_step, state, None, length=chunk)
    return state, record, to_params(state.z)


def fit(
    loss_and_grad: Callable,
    guess: PyTree,
    optimizer: optax.GradientTransformation,
    nsteps: int,
    *,
    param_bounds: Any = None,
    randkey: Any = None,
    const_randkey: bool = False,
    thin: int = 1,
    progress: bool = True,
    desc: str = "Fit",
    has_aux: bool = False,
    comm: Any = None,
    checkpoint: str | None = None,
    checkpoint_every: int = 100,
) -> FitResult:
    """Minimise a loss with any optax optimiser, in one compiled loop.

    The steps run inside ``jax.lax.scan``, in chunks between which the
    progress bar (rank 0 only) is updated and a checkpoint may be written.

    Parameters
    ----------
    loss_and_grad : callable
        ``loss_and_grad(params, randkey) -> (loss, grad)`` (``((loss, aux),
        grad)`` with ``has_aux``), traceable by JAX. ``randkey`` is None when
        no key was given.
    guess : pytree of arrays
        Initial parameters, identical on every rank.
    optimizer : optax.GradientTransformation
        Any optax optimiser, e.g. ``optax.adam(0.01)`` or ``optax.lbfgs()``.
    nsteps : int
        Number of steps.
    param_bounds : Sequence, optional
        ``(lower, upper)`` per flattened parameter, "shape" (ndim, 2); None
        or +-inf for an open side. Bounded parameters are optimised through a
        smooth change of variables, so the fit never leaves the bounds.
    randkey : int | PRNG key, optional
        If given, step ``t`` receives ``jax.random.fold_in(key, t)``: a fresh
        key each step, the same on every rank.
    const_randkey : bool (default=False)
        Pass the same key at every step instead.
    thin : int (default=1)
        Record every ``thin``-th step only (the final parameters always).
    progress : bool (default=True)
        Show a progress bar on rank 0.
    desc : str
        Label of the progress bar.
    has_aux : bool (default=False)
        Whether the loss returns ``(loss, aux)``.
    comm : MPI.Intracomm, optional
        Communicator of the ranks taking part (for the progress bar,
        checkpoints and the replicated-guess check).
    checkpoint : str, optional
        Path of a checkpoint file. Rank 0 writes it atomically every
        ``checkpoint_every`` steps; a later call with the same path resumes
        from it.
    checkpoint_every : int (default=100)
        Steps between checkpoints.

    Returns
    -------
    FitResult
        ``(params, losses, aux)`` histories. If the loss or gradient becomes
        non-finite, the fit stops at that step on every rank with a
        ``RuntimeWarning`` and the history ends at the last finite step.

    Raises
    ------
    NonFiniteGuessError
        A ``ValueError``, on every rank, if the loss or its gradient is not
        finite at the guess itself.
    """
    nsteps = check_count("nsteps", nsteps)
    thin = check_count("thin", thin, minimum=1)
    checkpoint_every = check_count("checkpoint_every", checkpoint_every, minimum=1)
    check_path("checkpoint", checkpoint)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    comm = _comm.default_comm(comm)
    guess, flat_guess, spec = check_guess(guess)
    host_guess = np.asarray(flat_guess)
    bounds = parse_bounds(param_bounds, flat_guess.size)
    reparam = None
    if bounds is not None:
        check_inside(host_guess, bounds)
        reparam = Reparam(jnp.asarray(bounds[0], flat_guess.dtype), jnp.asarray(bounds[1], flat_guess.dtype))
    base_key = as_key(randkey)
    check_replicated_inputs(host_guess, base_key, comm)

    z0 = flat_guess if reparam is None else reparam.from_params(flat_guess)
    state = _LoopState(z0, optimizer.init(z0), jnp.asarray(0), jnp.asarray(False))
    # Chunks of rows: the params at which the loss was evaluated, that loss, its aux leaves.
    history = _History([np.empty((0, host_guess.size), host_guess.dtype)], [host_guess[:0]], [])
    aux_treedef = None
    if checkpoint is not None:
        problem = checkpoint_problem(state, base_key, bounds, has_aux)
        resumed = load_checkpoint(checkpoint, problem, state, base_key, comm)
        if resumed is not None:
            state, saved = resumed
            history = _History([saved["params"]], [saved["losses"]], [[a] for a in saved["aux"]])
            if int(state.step) > nsteps:
                raise ValueError(
                    f"checkpoint {str(checkpoint)!r} already holds {int(state.step)} steps, more "
                    f"than nsteps={nsteps}; ask for at least {int(state.step)} steps or use "
                    "another checkpoint path"
                )

    chunk = checkpoint_every if checkpoint is not None else math.ceil(nsteps / 20)
    chunk = max(1, min(chunk, nsteps, 1000))
    final = state.z if reparam is None else reparam.to_params(state.z)
    with progress_bar(nsteps, desc, progress, comm) as bar:
        bar.update(int(state.step))
        while int(state.step) < nsteps:
            start = int(state.step)
            state, (p, losses, aux, went), final = _run_chunk(
                loss_and_grad, optimizer, reparam, spec, base_key, const_randkey,
                has_aux, jnp.asarray(nsteps), chunk, state,
            )
            went = np.asarray(went)
            history.params.append(np.asarray(p)[went])
            history.losses.append(np.asarray(losses)[went])
            if has_aux:
                leaves, aux_treedef = jax.tree_util.tree_flatten(aux)
                history.aux = history.aux or [[] for _ in leaves]
                for rows, leaf in zip(history.aux, leaves):
                    rows.append(np.asarray(leaf)[went])
            bar.update(int(state.step) - start)
            if bool(state.stopped) and int(state.step) == 0:
                raise_nonfinite_guess(desc, np.asarray(losses)[0])
            if bool(state.stopped):
                warnings.warn(
                    f"{desc}: the loss or its gradient became non-finite at step "
                    f"{int(state.step)} (loss = {np.asarray(losses)[~went][0]}); stopped "
                    "there, returning the history up to the last finite step",
                    RuntimeWarning,
                    stacklevel=2,
                )
                break
            if checkpoint is not None:
                save_checkpoint(checkpoint, problem, state, base_key, history.stacked(), comm)

    recorded = history.stacked()
    params = recorded["params"]
    if not bool(state.stopped):
        params = np.concatenate([params, np.asarray(final)[None]])
    keep = np.arange(0, len(params), thin)
    if keep[-1] != len(params) - 1:
        keep = np.append(keep, len(params) - 1)
    aux = None
    if has_aux:
        if aux_treedef is None:  # resumed from a finished checkpoint: nothing ran
            key0 = None if base_key is None else jax.random.fold_in(base_key, 0)
            (_, aux_shape), _ = jax.eval_shape(loss_and_grad, unflatten(flat_guess, spec), key0)
            aux_treedef = jax.tree_util.tree_structure(aux_shape)
        aux = jax.tree_util.tree_unflatten(
            aux_treedef, [jnp.asarray(a[::thin]) for a in recorded["aux"]]
        )
    params = jnp.asarray(params[keep])
    if isinstance(guess, jax.Array):
        params = params.reshape((len(params),) + jnp.shape(guess))
    else:
        params = jax.vmap(lambda p: unflatten(p, spec))(params)
    return FitResult(params, jnp.asarray(recorded["losses"][::thin]), aux)
