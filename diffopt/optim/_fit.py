"""Gradient-based fits with any optax optimiser: a pure init/step pair, and the compiled loop around it."""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PyTree

from .. import _comm
from .._keys import as_key
from ._bounds import Reparam, check_inside, parse_bounds
from ._checkpoint import Checkpoint
from ._checks import (
    check_count, check_guess, check_path, check_replicated_inputs, raise_nonfinite_guess,
)
from ._flat import FlatSpec, flatten, flatten_like, kept_rows, unflatten, unflatten_rows
from ._loop import compiled_init, compiled_steps, run_loop
from ._static import StaticOptimizer


class FitResult(NamedTuple):
    """History of a fit.

    Attributes
    ----------
    params : pytree of arrays
        Parameters at every step, stacked on a leading axis (like ``guess``
        otherwise): row 0 is the guess and the last row the final parameters.
    losses : array
        The loss at each row of ``params``.
    aux : pytree or None
        Auxiliary loss output at each row of ``params``, when ``has_aux``.
    """

    params: PyTree
    losses: Array
    aux: Any = None


class FitState(NamedTuple):
    """The state of a gradient-based fit between two steps.

    Attributes
    ----------
    z : array
        The flattened parameters in the optimiser's variables (unbounded:
        bounded parameters are a smooth function of them).
    opt_state : pytree
        The optax optimiser's state.
    stopped : bool array
        True once a step met a non-finite loss or gradient; later steps then
        leave the state unchanged.
    """

    z: Float[Array, " n"]
    opt_state: PyTree
    stopped: Bool[Array, ""]


class FitInfo(NamedTuple):
    """What one step of a fit saw.

    Attributes
    ----------
    params : pytree
        The parameters at which the loss and gradient were evaluated.
    loss : scalar array
        The loss there.
    aux : pytree or None
        The loss's auxiliary output there (``has_aux``).
    finite : bool array
        Whether the loss and gradient were finite (else the step was not taken).
    """

    params: PyTree
    loss: Array
    aux: Any
    finite: Bool[Array, ""]


class FitAlgorithm(eqx.Module):
    """A gradient-based fit as a pure ``init`` and ``step``, for your own jitted loop.

    Build one with :func:`fit_algorithm`. ``step`` keeps what
    :func:`fit` guarantees: parameters stay inside their bounds, and a step
    that meets a non-finite loss or gradient is not taken and marks the
    state ``stopped`` (later steps are no-ops), so a hand-written
    ``lax.scan`` loop never walks into NaNs. The state then stays at the
    point where the loss was first not finite; the last finite parameters
    are the ``info.params`` of the step before.
    """

    loss_and_grad: Callable
    optimizer: StaticOptimizer = eqx.field(static=True)
    reparam: Reparam | None
    spec: FlatSpec = eqx.field(static=True)
    has_aux: bool = eqx.field(static=True)

    def init(self, guess: PyTree) -> FitState:
        """The state before the first step, starting from ``guess``."""
        flat, spec = flatten(guess)
        if spec != self.spec:
            raise ValueError("guess must have the structure, shapes and dtypes the algorithm was built for")
        z = flat if self.reparam is None else self.reparam.from_params(flat)
        return FitState(z, self.optimizer.value.init(z), jnp.asarray(False))

    def params(self, state: FitState) -> PyTree:
        """The parameters of ``state``, in the shape of the guess."""
        return unflatten(self._to_flat_params(state.z), self.spec)

    def _to_flat_params(self, z):
        return z if self.reparam is None else self.reparam.to_params(z)

    def _value_and_grad_z(self, z, randkey):
        p_flat, pullback = jax.vjp(self._to_flat_params, z)
        # A barrier: XLA would otherwise fuse the change of variables into every
        # use of the parameters in the loss, and compile the fit much longer.
        p_flat = jax.lax.optimization_barrier(p_flat)
        out, grad = self.loss_and_grad(unflatten(p_flat, self.spec), randkey)
        (g_z,) = pullback(flatten_like(grad, z.dtype))
        return out, g_z, p_flat

    def step(self, state: FitState, randkey: Any = None) -> tuple[FitState, FitInfo]:
        """Evaluate the loss and gradient at ``state``'s parameters, then take one optimiser step.

        Parameters
        ----------
        state : FitState
            The current state.
        randkey : PRNG key, optional
            Passed to ``loss_and_grad`` (None if the loss takes no key).

        Returns
        -------
        state : FitState
            The next state (unchanged if the loss or gradient is not finite,
            or the state was already stopped).
        info : FitInfo
            The parameters, loss and aux of this evaluation.
        """
        out, g_z, p_flat = self._value_and_grad_z(state.z, randkey)
        loss, aux = out if self.has_aux else (out, None)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g_z))
        optimizer = self.optimizer.value
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            def value_fn(z):
                o = self._value_and_grad_z(z, randkey)[0]
                return o[0] if self.has_aux else o

            updates, opt_state = optimizer.update(
                g_z, state.opt_state, state.z, value=loss, grad=g_z, value_fn=value_fn
            )
        else:
            updates, opt_state = optimizer.update(g_z, state.opt_state, state.z)
        go = finite & ~state.stopped
        new = FitState(
            z=jnp.where(go, optax.apply_updates(state.z, updates), state.z),
            opt_state=jax.tree_util.tree_map(lambda a, b: jnp.where(go, a, b), opt_state, state.opt_state),
            stopped=state.stopped | ~finite,
        )
        return new, FitInfo(unflatten(p_flat, self.spec), loss, aux, finite)


def fit_algorithm(
    loss_and_grad: Callable,
    guess: PyTree,
    optimizer: optax.GradientTransformation,
    *,
    param_bounds: Any = None,
    has_aux: bool = False,
) -> FitAlgorithm:
    """A gradient-based fit of ``loss_and_grad`` as a pure ``init``/``step`` pair.

    This is what :func:`fit` runs, for users who write their own compiled
    loop::

        algo = optim.fit_algorithm(loss_and_grad, guess, optax.adam(0.01), param_bounds=bounds)

        @jax.jit
        def run(state, key):
            def body(state, t):
                state, info = algo.step(state, jax.random.fold_in(key, t))
                return state, info.loss
            return jax.lax.scan(body, state, jnp.arange(500))

        state, losses = run(algo.init(guess), jax.random.key(0))
        best = algo.params(state)

    Parameters
    ----------
    loss_and_grad : callable
        ``loss_and_grad(params, randkey) -> (loss, grad)`` (``((loss, aux),
        grad)`` with ``has_aux``), traceable by JAX.
    guess : array or pytree of arrays
        Parameters of the shape the fit works on (see :func:`fit`).
    optimizer : optax.GradientTransformation
        Any optax optimiser. Optimisers built again with the same
        hyperparameters compare equal, so compiled code is reused.
    param_bounds : Sequence, optional
        ``(lower, upper)`` per flattened parameter, as for :func:`fit`.
    has_aux : bool (default=False)
        Whether the loss returns ``(loss, aux)``.

    Returns
    -------
    FitAlgorithm
        With ``init(guess) -> FitState``, ``step(state, randkey) -> (FitState,
        FitInfo)`` and ``params(state)``.
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    guess, flat_guess, spec = check_guess(guess)
    reparam = None
    bounds = parse_bounds(param_bounds, flat_guess.size)
    if bounds is not None:
        check_inside(np.asarray(flat_guess), bounds)
        dtype = flat_guess.dtype
        reparam = Reparam(jnp.asarray(bounds[0], dtype), jnp.asarray(bounds[1], dtype))
    return FitAlgorithm(loss_and_grad, StaticOptimizer(optimizer), reparam, spec, bool(has_aux))


class _FitLoopStep(eqx.Module):
    """One step of :func:`fit`'s loop: the key of step ``t``, and a flat record."""

    algorithm: FitAlgorithm
    base_key: Any
    const_randkey: bool = eqx.field(static=True)

    def __call__(self, state: FitState, t):
        key = self.base_key
        if key is not None and not self.const_randkey:
            key = jax.random.fold_in(key, t)
        state, info = self.algorithm.step(state, key)
        record = {"params": flatten_like(info.params, state.z.dtype), "loss": info.loss}
        for i, leaf in enumerate(jax.tree_util.tree_leaves(info.aux)):
            record[f"aux_{i}"] = leaf
        return state, record, info.finite


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

    The steps run inside a compiled ``lax.while_loop``, in chunks between
    which the progress bar (rank 0 only) is updated and a checkpoint may be
    written. The compiled loop depends on the problem only: another
    ``nsteps``, guess or key reuses it.

    Parameters
    ----------
    loss_and_grad : callable
        ``loss_and_grad(params, randkey) -> (loss, grad)`` (``((loss, aux),
        grad)`` with ``has_aux``), traceable by JAX. ``randkey`` is None when
        no key was given.
    guess : array-like or pytree of arrays
        Initial parameters, identical on every rank. Anything NumPy reads as
        one numeric array (a list, tuple or ``NamedTuple`` of numbers, or an
        array) is an array; dicts, equinox Modules and other pytrees keep
        their structure.
    optimizer : optax.GradientTransformation
        Any optax optimiser, e.g. ``optax.adam(0.01)`` or ``optax.lbfgs()``.
    nsteps : int
        Number of optimiser steps.
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
        Return every ``thin``-th row only (the final parameters always); 0
        returns only the final parameters and their loss, unstacked.
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
        from it (and with a larger ``nsteps``, extends the fit).
    checkpoint_every : int (default=100)
        Steps between checkpoints.

    Returns
    -------
    FitResult
        ``(params, losses, aux)`` histories of ``nsteps + 1`` rows: the guess,
        the parameters after each step, and the loss (and aux) at each of
        them. If the loss or gradient becomes non-finite, the fit stops at
        that step on every rank with a ``RuntimeWarning`` and the history
        ends at the last finite row.

    Raises
    ------
    NonFiniteGuessError
        A ``ValueError``, on every rank, if the loss or its gradient is not
        finite at the guess itself.
    """
    nsteps = check_count("nsteps", nsteps)
    thin = check_count("thin", thin)
    checkpoint_every = check_count("checkpoint_every", checkpoint_every, minimum=1)
    check_path("checkpoint", checkpoint)
    comm = _comm.default_comm(comm)
    algorithm = fit_algorithm(loss_and_grad, guess, optimizer, param_bounds=param_bounds, has_aux=has_aux)
    guess = check_guess(guess)[0]
    state = compiled_init(algorithm, guess)
    base_key = as_key(randkey)
    key_data = None if base_key is None else np.asarray(jax.random.key_data(base_key))
    check_replicated_inputs(np.asarray(flatten(guess)[0]), base_key, comm)

    loop_step = _FitLoopStep(algorithm, base_key, bool(const_randkey))
    saving = None
    if checkpoint is not None:
        saving = Checkpoint(checkpoint, checkpoint_every, "diffopt fit", _problem(state, algorithm, base_key), key_data)
    # One evaluation more than steps: the loss at the final parameters.
    state, history, done, stopped = run_loop(
        *compiled_steps(loop_step, state), nsteps + 1, desc=desc,
        progress=progress, comm=comm, checkpoint=saving, nsteps_offset=1,
    )
    if stopped:
        if done == 0:
            raise_nonfinite_guess(desc, history["loss"][-1])
        warnings.warn(
            f"{desc}: the loss or its gradient became non-finite at step {done} (loss = "
            f"{history['loss'][-1]}); stopped there, returning the history up to the last finite step",
            RuntimeWarning,
            stacklevel=2,
        )
        history = {name: rows[:-1] for name, rows in history.items()}
    keep = kept_rows(done, thin)
    params = unflatten_rows(history["params"][keep], algorithm.spec, isinstance(guess, jax.Array))
    aux = None
    if has_aux:
        aux_shape = jax.eval_shape(lambda s: algorithm.step(s, loop_step.base_key)[1].aux, state)
        leaves = [jax.device_put(history[f"aux_{i}"][keep]) for i in range(len(jax.tree_util.tree_leaves(aux_shape)))]
        aux = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(aux_shape), leaves)
    return FitResult(params, jax.device_put(history["loss"][keep]), aux)


def _problem(state: FitState, algorithm: FitAlgorithm, base_key) -> str:
    """What a checkpoint must match to be resumed by this fit, in words."""
    opt_state = ", ".join(
        f"{jnp.result_type(x)}{tuple(jnp.shape(x))}" for x in jax.tree_util.tree_leaves(state.opt_state)
    )
    reparam = algorithm.reparam
    parts = [
        f"{jnp.size(state.z)} {jnp.result_type(state.z)} parameters",
        f"optimiser state [{opt_state}]",
        "a random key" if base_key is not None else "no random key",
        "aux values" if algorithm.has_aux else "no aux values",
        "no bounds" if reparam is None else
        f"bounds {np.stack([np.asarray(reparam.lower), np.asarray(reparam.upper)]).T.tolist()}",
    ]
    return "; ".join(parts)
