"""One driver for every iterative algorithm: compiled chunks, progress, checkpoints, non-finite stop.

An algorithm is a pure ``step(state, t) -> (state, record, ok)``: from the
loop state and the step's index ``t`` it computes the next state, a record of
the step (a pytree of arrays: parameters, loss...), and whether the step is
sound (finite). The driver, :func:`run_loop`:

- runs the steps in chunks, each one call of a compiled ``lax.while_loop``
  (:func:`compiled_steps`) or, for algorithms that call back into Python
  (a particle swarm with a NumPy loss), of a host function;
- updates the progress bar (rank 0 only) between chunks;
- saves a checkpoint every ``checkpoint.every`` steps and resumes from it;
- stops at the first step that is not sound, keeping the state before it.

The chunks' lengths adapt to the time a step takes (a few tenths of a second
each), and they are arguments, not part of the compiled program: the same
program serves every ``nsteps``, guess and key of a problem.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checkpoint import Checkpoint
from ._progress import progress_bar

# Seconds a chunk aims at: often enough for a lively progress bar, rarely
# enough that the Python between chunks costs nothing.
_CHUNK_SECONDS = 0.3
# The compiled chunk records at most this many array elements per chunk.
_BUFFER_ELEMENTS = 2**21


class Chunk(NamedTuple):
    """The outcome of running steps ``start`` to at most ``stop`` of a loop.

    Attributes
    ----------
    state : pytree
        The state after the last sound step.
    records : pytree of np.ndarray
        One row per step run, stacked; the last row is the unsound step when
        ``stopped``.
    done : int
        The index of the next step to run.
    stopped : bool
        Whether a step was not sound (its row is the last of ``records``).
    """

    state: Any
    records: Any
    done: int
    stopped: bool


def _select(pred, new, old):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), new, old)


@eqx.filter_jit
def _run_steps(step, state, start, stop, records: tuple):
    treedef, shapes = records
    buffers = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s.shape, s.dtype) for s in shapes])

    def cond(carry):
        t, _, _, ok = carry
        return (t < stop) & ok

    def body(carry):
        t, state, buffers, _ = carry
        new_state, record, ok = step(state, t)
        buffers = jax.tree_util.tree_map(lambda b, r: b.at[t - start].set(r), buffers, record)
        return t + 1, _select(ok, new_state, state), buffers, ok

    t, state, buffers, ok = jax.lax.while_loop(cond, body, (start, state, buffers, jnp.array(True)))
    return state, buffers, t, ok


@eqx.filter_jit
def compiled_init(algorithm, *args):
    """``algorithm.init(*args)``, compiled: one program instead of many small eager ones."""
    return algorithm.init(*args)


def compiled_steps(step: Callable, state: Any) -> tuple[Callable[[Any, int, int], Chunk], Any]:
    """A chunk runner for a traceable ``step``: one compiled while-loop per chunk.

    ``step`` must be hashable and compare equal for equal problems (an
    ``equinox.Module``, or a function), so that its compiled loop is reused.
    A chunk records at most 1024 steps, and about 16 MB.

    Returns the runner and ``state`` cast to the dtypes ``step`` returns (so
    that the first chunk and the next ones run the same compiled loop).
    """
    out_state, record, _ = jax.eval_shape(step, state, jnp.asarray(0))
    state = jax.tree_util.tree_map(lambda x, s: jnp.asarray(x, dtype=s.dtype), state, out_state)
    size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(record))
    rows = int(np.clip(_BUFFER_ELEMENTS // max(size, 1), 16, 1024))
    leaves, treedef = jax.tree_util.tree_flatten(record)
    records = (treedef, tuple(jax.ShapeDtypeStruct((rows, *s.shape), s.dtype) for s in leaves))

    def run(state, start: int, stop: int) -> Chunk:
        stop = min(stop, start + rows)
        state, buffers, t, ok = _run_steps(step, state, jnp.asarray(start), jnp.asarray(stop), records)
        t, ok = int(t), bool(ok)
        buffers = jax.tree_util.tree_map(lambda b: np.asarray(b)[: t - start], buffers)
        return Chunk(state, buffers, t if ok else t - 1, not ok)

    return run, state


def run_loop(
    run_chunk: Callable[[Any, int, int], Chunk],
    state: Any,
    nsteps: int,
    *,
    desc: str,
    progress: bool,
    comm: Any,
    checkpoint: Checkpoint | None = None,
    extra: Callable[[], Any] = lambda: None,
    restore: Callable[[Any], None] = lambda extra: None,
    nsteps_offset: int = 0,
) -> tuple[Any, dict[str, np.ndarray], int, bool]:
    """Run steps ``0 .. nsteps - 1`` of a loop, resuming from ``checkpoint`` if it exists.

    Parameters
    ----------
    run_chunk : callable
        ``run_chunk(state, start, stop) -> Chunk``, e.g. :func:`compiled_steps`;
        a chunk's records are a dict of arrays with one row per step.
    state : pytree
        The state before step 0.
    nsteps : int
        Number of steps.
    desc, progress, comm :
        Label of the progress bar, whether to show it (on rank 0 of ``comm``).
    checkpoint : Checkpoint, optional
        Save every ``checkpoint.every`` steps and at the end; resume from it.
    extra, restore : callable
        Host-side state beyond ``state`` (a NumPy generator's state, say):
        ``extra()`` returns it as JSON-able data to save, ``restore(data)``
        sets it back when resuming.
    nsteps_offset : int (default=0)
        How many more steps the loop runs than the user asked for (a fit
        evaluates its final parameters too), for error messages.

    Returns
    -------
    state, history, done, stopped
        The final state, the records of every step run (including resumed
        ones) as a dict of stacked arrays, the number of sound steps, and
        whether a step was not sound (its row is then the last of history).
    """
    done, chunks = 0, []
    if checkpoint is not None:
        resumed = checkpoint.load(state, comm)
        if resumed is not None:
            state, done, saved, extra_data = resumed
            if done > nsteps:
                raise ValueError(
                    f"checkpoint {str(checkpoint.path)!r} already holds {done - nsteps_offset} steps, "
                    f"more than nsteps={nsteps - nsteps_offset}; ask for at least "
                    f"{done - nsteps_offset} steps or use another checkpoint path"
                )
            restore(extra_data)
            chunks.append(saved)
    stopped, first, rate = False, True, None  # rate: seconds per step, once compiled
    next_save = (done // checkpoint.every + 1) * checkpoint.every if checkpoint is not None else nsteps
    with progress_bar(nsteps, desc, progress, comm) as bar:
        bar.update(min(done, nsteps))
        while done < nsteps and not stopped:
            # The first chunk is one step (it compiles); the second measures the rate.
            size = 1 if first else 16 if rate is None else max(1, int(_CHUNK_SECONDS / rate))
            started = time.perf_counter()
            chunk = run_chunk(state, done, min(nsteps, done + size, next_save))
            if not first:
                rate = (time.perf_counter() - started) / max(chunk.done - done + chunk.stopped, 1)
            first = False
            bar.update(chunk.done - done)
            state, done, stopped = chunk.state, chunk.done, chunk.stopped
            chunks.append(chunk.records)
            if checkpoint is not None and not stopped and done in (next_save, nsteps):
                chunks = [_stacked(chunks)]
                checkpoint.save(state, done, chunks[0], extra(), comm)
                next_save = (done // checkpoint.every + 1) * checkpoint.every
    return state, _stacked(chunks), done, stopped


def _stacked(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not chunks:
        return {}
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
