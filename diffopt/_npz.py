"""Plain ``.npz`` files: written atomically, read without unpickling, shared by rank 0.

Checkpoints (of fits and of particle swarms) and saved pretrainers are
``.npz`` archives of plain arrays. Loading one never runs code from it.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from . import _comm


def write_atomically(path: str | os.PathLike, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to ``path``: a temporary file, flushed to disk, then renamed.

    A process killed while writing leaves the previous file intact.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read with ``allow_pickle=False``.

    Raises ``ValueError`` (saying the file is not ``what``) for anything that
    is not an archive of plain arrays, and ``FileNotFoundError`` if there is
    no file.
    """
    path = os.fspath(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # a truncated, foreign or pickled file
        raise ValueError(f"{path!r} is not {what} (cannot be read as .npz: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is not {what} (a single .npy array, not an .npz archive)")
    with npz:
        try:
            return {name: npz[name] for name in npz.files}
        except Exception as exc:
            raise ValueError(f"{path!r} is not {what} (unreadable field: {exc})") from None


def read_on_root(path: str | os.PathLike, load: Callable[[str], Any], comm: Any) -> Any:
    """``load(path)`` on rank 0, shared with every rank; None when there is no file.

    A ``ValueError`` of ``load`` is raised on every rank alike, so no rank
    goes on alone.
    """
    loaded, error = None, None
    if _comm.rank(comm) == 0 and os.path.exists(path):
        try:
            loaded = load(os.fspath(path))
        except ValueError as exc:
            error = str(exc)
    loaded, error = _comm.bcast((loaded, error), comm=comm)
    if error is not None:
        raise ValueError(error)
    return loaded
