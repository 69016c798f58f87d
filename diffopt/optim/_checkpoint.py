"""Atomic, pickle-free checkpoints of any loop run by :func:`diffopt.optim.run_loop`.

A checkpoint is a plain ``.npz`` file written by rank 0: the loop state (its
leaves), the number of steps done, the history so far, the random key, any
host-side extra state (as JSON text), and a description of the problem, so
that a file of another problem, or one written with another random key, is
refused rather than silently resumed.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _comm, _npz

_FORMAT = "diffopt-loop-checkpoint-3"


class Resumed(NamedTuple):
    """What a checkpoint holds."""

    state: Any
    done: int
    history: dict[str, np.ndarray]
    extra: Any


class Checkpoint(NamedTuple):
    """Where and how often a loop saves itself, and what it must match to resume.

    Attributes
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    every : int
        Steps between saves.
    label : str
        What kind of checkpoint this is, in error messages (``"diffopt fit"``).
    problem : str
        The problem, in words; a file with another description is refused.
    key : array or None
        Key data of the loop's random key; a file with another key is refused.
    """

    path: str | os.PathLike
    every: int
    label: str
    problem: str
    key: np.ndarray | None = None

    def save(self, state: Any, done: int, history: dict[str, np.ndarray], extra: Any, comm) -> None:
        """Rank 0 writes everything to a temporary file, then renames it over ``path``.

        A job killed while writing leaves the previous checkpoint intact.
        """
        if _comm.rank(comm) != 0:
            return
        arrays = {f"state_{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))}
        arrays.update({f"history_{name}": np.asarray(rows) for name, rows in history.items()})
        if self.key is not None:
            arrays["key"] = np.asarray(self.key)
        _npz.write_atomically(
            self.path,
            dict(format=np.array(_FORMAT), label=np.array(self.label), problem=np.array(self.problem),
                 nsteps_done=np.array(done), extra=np.array(json.dumps(extra)), **arrays),
        )

    def load(self, template: Any, comm) -> Resumed | None:
        """The saved loop, or None when there is no file yet.

        Rank 0 reads and broadcasts, so every rank resumes from the same state
        or raises the same ``ValueError``: a file that is not a checkpoint of
        this kind, one of another problem, or one written with another key.
        ``template`` is a state of the right structure.
        """
        num_leaves = len(jax.tree_util.tree_leaves(template))
        loaded = _npz.read_on_root(self.path, lambda p: self._read(p, num_leaves), comm)
        if loaded is None:
            return None
        leaves, done, history, extra = loaded
        treedef = jax.tree_util.tree_structure(template)
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])
        return Resumed(state, done, history, extra)

    def _read(self, path: str, num_leaves: int):
        data = _npz.read(path, f"a {self.label} checkpoint")
        if str(data.get("format", "")) != _FORMAT or str(data.get("label", "")) != self.label:
            raise ValueError(f"checkpoint {path!r} is not a {self.label} checkpoint")
        if str(data["problem"]) != self.problem:
            raise ValueError(
                f"checkpoint {path!r} belongs to another problem: it holds {str(data['problem'])!r} "
                f"where this run needs {self.problem!r}; delete it or pass another checkpoint path"
            )
        if self.key is not None and not np.array_equal(data.get("key"), self.key):
            raise ValueError(
                f"checkpoint {path!r} was written with a different randkey; pass the same "
                "randkey to resume, or use another checkpoint path"
            )
        leaves = [data[f"state_{i}"] for i in range(num_leaves)]
        history = {name[len("history_"):]: rows for name, rows in data.items() if name.startswith("history_")}
        return leaves, int(data["nsteps_done"]), history, json.loads(str(data["extra"]))
