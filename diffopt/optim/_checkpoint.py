"""Atomic, pickle-free checkpoints of the fit loop.

A checkpoint is a plain ``.npz`` file written by rank 0: the loop state
(parameters in the optimiser's variables, optimiser state, step), the random
key, the history so far, and a description of the problem (shapes and dtypes
of the state, bounds, whether a key and aux values are used), so that a file
from another problem is refused rather than silently resumed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import _comm, _npz

_FORMAT = "diffopt-fit-checkpoint-2"


def checkpoint_problem(state, base_key, bounds, has_aux: bool) -> str:
    """What a checkpoint must match to be resumed by this fit, in words."""
    opt_state = ", ".join(
        f"{jnp.result_type(x)}{tuple(jnp.shape(x))}" for x in jax.tree_util.tree_leaves(state.opt_state)
    )
    parts = [
        f"{jnp.size(state.z)} {jnp.result_type(state.z)} parameters",
        f"optimiser state [{opt_state}]",
        "a random key" if base_key is not None else "no random key",
        "aux values" if has_aux else "no aux values",
        "no bounds" if bounds is None else f"bounds {np.asarray(bounds).T.tolist()}",
    ]
    return "; ".join(parts)


def save_checkpoint(path, problem: str, state, base_key, history: dict, comm) -> None:
    """Rank 0 writes the loop state and history to ``path``: a temporary file, then renamed.

    A job killed while writing leaves the previous checkpoint intact.
    """
    if _comm.rank(comm) != 0:
        return
    arrays = {f"state_{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))}
    if base_key is not None:
        arrays["key"] = np.asarray(jax.random.key_data(base_key))
    arrays.update({f"aux_{i}": a for i, a in enumerate(history["aux"])})
    _npz.write_atomically(
        path, dict(format=np.array(_FORMAT), problem=np.array(problem),
                   params_history=history["params"], loss_history=history["losses"], **arrays),
    )


def load_checkpoint(path, problem: str, state, base_key, comm):
    """Return ``(state, history)`` from ``path``, or None if there is no file yet.

    Rank 0 reads and broadcasts, so every rank resumes from the same state
    (or raises the same ``ValueError``: a file that is not a fit checkpoint,
    one of another problem, or one written with another random key).
    """
    num_leaves = len(jax.tree_util.tree_leaves(state))
    loaded = _npz.read_on_root(path, lambda p: _read(p, problem, num_leaves), comm)
    if loaded is None:
        return None
    leaves, key_data, history = loaded
    if base_key is not None and not np.array_equal(key_data, np.asarray(jax.random.key_data(base_key))):
        raise ValueError(
            f"checkpoint {str(path)!r} was written with a different randkey; pass the same "
            "randkey to resume, or use another checkpoint path"
        )
    treedef = jax.tree_util.tree_structure(state)
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves]), history


def _read(path: str, problem: str, num_leaves: int):
    data = _npz.read(path, "a fit checkpoint")
    if "format" not in data or str(data["format"]) != _FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a diffopt fit checkpoint")
    if str(data["problem"]) != problem:
        raise ValueError(
            f"checkpoint {path!r} belongs to a different problem: it holds {str(data['problem'])!r} "
            f"where this fit needs {problem!r}; delete it or pass another checkpoint path"
        )
    leaves = [data[f"state_{i}"] for i in range(num_leaves)]
    num_aux = sum(name.startswith("aux_") for name in data)
    history = {
        "params": data["params_history"],
        "losses": data["loss_history"],
        "aux": [data[f"aux_{i}"] for i in range(num_aux)],
    }
    return leaves, data.get("key"), history
