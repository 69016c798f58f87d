"""Saving and resuming a particle swarm run.

A checkpoint is a plain ``.npz`` file (never pickled) written by rank 0: the
swarm state after the last completed step, the history so far, and the
problem it belongs to (number of particles, dimensions and the box), so that
a checkpoint of another problem is refused rather than silently resumed.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .._npz import read, write_atomically
from ._update import SwarmState

FORMAT = "diffopt.multiswarm.checkpoint/1"
_HISTORY_KEYS = ("swarm_x_history", "swarm_v_history", "swarm_loss_history")
_STATE_KEYS = ("x", "v", "best_x", "best_loss")


def save_checkpoint(
    path: str | os.PathLike,
    state: SwarmState,
    random_state: dict,
    nsteps_done: int,
    history: dict[str, np.ndarray],
    problem: dict[str, np.ndarray],
) -> None:
    """Write the checkpoint atomically: to a temporary file, then renamed.

    A run killed while writing leaves the previous checkpoint intact.
    """
    arrays = {
        "format": np.array(FORMAT),
        "nsteps_done": np.array(nsteps_done),
        # The generator's state holds 128-bit integers: JSON text keeps them exact.
        "random_state": np.array(json.dumps(random_state)),
        **{f"problem_{name}": np.asarray(value) for name, value in problem.items()},
        **{name: np.asarray(getattr(state, name)) for name in _STATE_KEYS},
        **{name: history[name][:nsteps_done] for name in _HISTORY_KEYS},
    }
    write_atomically(path, arrays)


def load_checkpoint(
    path: str | os.PathLike, problem: dict[str, np.ndarray], dtype
) -> tuple[SwarmState, dict, int, dict[str, np.ndarray]]:
    """Read a checkpoint written by :func:`save_checkpoint` for ``problem``.

    Returns
    -------
    state : SwarmState
        The state after the last completed step, before its losses were
        recorded in the personal bests.
    random_state : dict
        State of the NumPy bit generator drawing the random factors.
    nsteps_done : int
        Number of completed steps (rows of history).
    history : dict
        The history arrays, ``nsteps_done`` rows each.

    Raises
    ------
    ValueError
        If the file is not a swarm checkpoint or belongs to another problem.
    """
    arrays = read(path, "a diffopt.multiswarm checkpoint")
    if arrays.get("format", np.array("")).item() != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a diffopt.multiswarm checkpoint")
    for name, expected in problem.items():
        found = arrays[f"problem_{name}"]
        if found.shape != np.shape(expected) or not np.array_equal(found, expected):
            raise ValueError(
                f"checkpoint {str(path)!r} belongs to another problem: it has {name}="
                f"{found.tolist()}, this swarm has {name}={np.asarray(expected).tolist()}. "
                "Use another checkpoint path or delete the file"
            )
    state = SwarmState(*(arrays[name].astype(dtype) for name in _STATE_KEYS))
    random_state = json.loads(arrays["random_state"].item())
    history = {name: arrays[name].astype(dtype) for name in _HISTORY_KEYS}
    return state, random_state, int(arrays["nsteps_done"]), history
