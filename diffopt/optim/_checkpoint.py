"""Atomic, pickle-free checkpoints of the fit loop."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from .. import _comm

_FORMAT = "diffopt-fit-checkpoint-1"


def _signature(state, base_key) -> str:
    leaves = jax.tree_util.tree_leaves(state)
    parts = [f"{jnp.result_type(x)}{tuple(jnp.shape(x))}" for x in leaves]
    parts.append("nokey" if base_key is None else "key")
    return ";".join(parts)


def save_checkpoint(path, state, base_key, params_hist, loss_hist, comm) -> None:
    """Rank 0 writes the loop state and history to ``path`` (temp file, then rename)."""
    if _comm.rank(comm) != 0:
        return
    arrays = {f"state_{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))}
    if base_key is not None:
        arrays["key"] = np.asarray(jax.random.key_data(base_key))
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(
        tmp, format=np.array(_FORMAT), signature=np.array(_signature(state, base_key)),
        params_history=params_hist, loss_history=loss_hist, **arrays,
    )
    os.replace(tmp, path)


def load_checkpoint(path, state, base_key, comm):
    """Return ``(state, params_history, loss_history)`` from ``path``, or None if absent.

    Rank 0 reads and broadcasts, so every rank resumes from the same state.
    A file for another problem (other shapes, or no key where one is used)
    raises ``ValueError``.
    """
    loaded, error = None, None
    if _comm.rank(comm) == 0 and os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as f:
                if "format" not in f or str(f["format"]) != _FORMAT:
                    raise ValueError(f"checkpoint {path!r} is not a diffopt fit checkpoint")
                expected = _signature(state, base_key)
                if str(f["signature"]) != expected:
                    raise ValueError(
                        f"checkpoint {path!r} belongs to a different problem: it holds "
                        f"{str(f['signature'])!r} where this fit needs {expected!r}; "
                        "delete it or pass another checkpoint path"
                    )
                n = len(jax.tree_util.tree_leaves(state))
                loaded = (
                    [f[f"state_{i}"] for i in range(n)],
                    f["key"] if "key" in f else None,
                    f["params_history"],
                    f["loss_history"],
                )
        except ValueError as exc:
            error = str(exc)
        except Exception as exc:  # a truncated or foreign file
            error = f"checkpoint {path!r} could not be read: {exc}"
    loaded, error = _comm.bcast((loaded, error), comm=comm)
    if error is not None:
        raise ValueError(error)
    if loaded is None:
        return None
    leaves, key_data, params_hist, loss_hist = loaded
    if base_key is not None and not np.array_equal(key_data, np.asarray(jax.random.key_data(base_key))):
        raise ValueError(f"checkpoint {path!r} was written with a different randkey")
    treedef = jax.tree_util.tree_structure(state)
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])
    return state, params_hist, loss_hist
