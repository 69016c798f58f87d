"""Opt-in persistent compilation cache: the second run of a script skips compilation."""

from __future__ import annotations

import os

import jax

__all__ = ["enable_compilation_cache"]


def _default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "diffopt", "jax")


def enable_compilation_cache(path: str | os.PathLike | None = None, *, min_compile_time_secs: float = 0.0) -> str:
    """Keep compiled programs on disk, so that the next run of a script does not compile them again.

    One line at the top of a script, run on every MPI rank:
    ``diffopt.enable_compilation_cache("out/jax-cache")``.

    This is JAX's persistent compilation cache, set up for fits: JAX by
    default only writes programs that took more than a second to compile,
    which leaves out most of the many small programs a fit runs (the loss and
    gradient, each chunk of the optimiser loop, the pretraining blocks). Here
    every program is written, whatever its size or compile time.

    The programs are found again when the same code runs with arrays of the
    same shapes and dtypes on the same kind of device and the same versions of
    jax and jaxlib. Ranks of one MPI job can share the directory. As with any
    JAX compilation cache, the directory is trusted: do not point it at a
    place others can write to.

    The same settings can come from the environment, with no code change
    (as ``scripts/main_job.sh`` does): ``JAX_COMPILATION_CACHE_DIR=out/jax-cache``,
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`` and
    ``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1``.

    Parameters
    ----------
    path : str or path-like, optional
        Directory of the cache, created if missing. Default: JAX's own
        setting if there is one (``jax_compilation_cache_dir``, e.g. from the
        ``JAX_COMPILATION_CACHE_DIR`` environment variable), else
        ``$XDG_CACHE_HOME/diffopt/jax`` (``~/.cache/diffopt/jax``).
    min_compile_time_secs : float (default 0.0)
        Programs that compiled faster than this are not written.

    Returns
    -------
    str
        The absolute path of the cache directory.
    """
    if path is None:
        path = jax.config.jax_compilation_cache_dir or _default_dir()
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or an os.PathLike (or None), got {type(path).__name__}")
    if isinstance(min_compile_time_secs, bool) or not isinstance(min_compile_time_secs, (int, float)):
        raise TypeError(f"min_compile_time_secs must be a number, got {type(min_compile_time_secs).__name__}")
    if not min_compile_time_secs >= 0:
        raise ValueError(f"min_compile_time_secs must be >= 0, got {min_compile_time_secs}")
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    # -1: no minimum entry size (0 would let JAX substitute its own minimum).
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if previous is not None and os.path.abspath(previous) != path:
        # JAX opens its cache once, at the first compilation: make it reopen
        # at the new directory.
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    return path
