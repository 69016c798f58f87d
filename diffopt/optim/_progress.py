"""Progress bars, drawn on rank 0 only."""

from __future__ import annotations

import contextlib

from tqdm.auto import tqdm

from .. import _comm


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True, comm=None):
    """A tqdm bar on rank 0 of ``comm``; a silent stand-in elsewhere."""
    show = enabled and _comm.rank(comm) == 0
    bar = tqdm(total=total, desc=desc, disable=not show, leave=True)
    try:
        yield bar
    finally:
        bar.close()
