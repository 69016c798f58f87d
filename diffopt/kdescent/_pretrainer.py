"""KPretrainer: training-data kernel counts and ECF values, computed once."""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Complex, Float

from .. import _comm, _npz
from . import _checks
from ._kernels import (
    _matmul,
    fourier_sums_and_squares,
    gaussian_kernel_sums_and_squares,
)

__all__ = ["KPretrainer"]

_FORMAT = "diffopt.kdescent.KPretrainer"
_VERSION = 1
# Pretrained kernels (or Fourier positions, or density-weighting candidates)
# evaluated per block. Blocks have one fixed size, so that every block runs
# the same compiled code whichever rank computes it: a pretrainer spread over
# ranks is bit-identical to one computed by a single process.
_DEFAULT_BLOCK = 1024

_ARRAY_FIELDS = (
    "kernel_centers",
    "kernel_cov",
    "kde_counts",
    "kde_err",
    "fourier_positions",
    "fourier_counts",
    "fourier_err",
    "training_mean",
    "training_sum_of_weights",
)
_STATIC_FIELDS = {
    "num_eval_kernels": int,
    "num_eval_fourier_positions": int,
    "bandwidth_factor": float,
    "fourier_range_factor": float,
    "covariant_kernels": bool,
    "inverse_density_weight_power": float,
    "seed": int,
}


class KPretrainer(eqx.Module):
    """Kernel counts and ECF values of the training data, computed once.

    Build one with :meth:`from_training_data` (or :meth:`load` a saved one)
    and hand it to :class:`KCalc`, which compares random subsets of these
    statistics with the same statistics of a model sample.

    All kernels are Gaussians sharing the covariance ``kernel_cov``; a
    *kernel count* is ``sum_n w_n N(x_n; c_k, kernel_cov)``, the weighted sum
    of the normalised Gaussian pdf over the points. Divided by the sum of the
    weights it is the kernel density estimate of the sample at ``c_k``, so
    counts grow linearly with the sample size. ECF values are
    ``sum_n w_n exp(i k . x_n)`` (again unnormalised).

    It is an ``equinox.Module``: the arrays below are pytree leaves, the
    settings are static fields.

    Attributes
    ----------
    kernel_centers : array (num_pretrain_kernels, ndim)
        Centres of all pretrained kernels.
    kernel_cov : array (ndim, ndim)
        The covariance shared by every kernel.
    kde_counts : array (num_pretrain_kernels,)
        Weighted kernel counts of the training data.
    kde_err : array (num_pretrain_kernels,)
        Their uncertainties, ``count / sqrt(ESS)`` with the effective sample
        size ``ESS = (sum w p)^2 / sum (w p)^2``; i.e. ``sqrt(sum (w p)^2)``.
    fourier_positions : array (num_pretrain_fourier_positions, ndim)
        Wave vectors ``k`` of all pretrained ECF evaluations.
    fourier_counts : complex array (num_pretrain_fourier_positions,)
        ``sum_n w_n exp(i k . x_n)`` over the training data.
    fourier_err : complex array (num_pretrain_fourier_positions,)
        Uncertainty of the real part (stored as the real part) and of the
        imaginary part (as the imaginary part): ``sqrt(sum (w cos)^2)`` and
        ``sqrt(sum (w sin)^2)``.
    training_mean : array (ndim,)
        Weighted mean of the training data (the origin used internally to
        keep float32 arithmetic accurate).
    training_sum_of_weights : scalar array
        Sum of the training weights (the number of points if unweighted).
    num_eval_kernels, num_eval_fourier_positions : int
        How many kernels / Fourier positions :class:`KCalc` draws per call.
    bandwidth_factor, fourier_range_factor, covariant_kernels,
    inverse_density_weight_power, seed :
        The settings used to build it (see :meth:`from_training_data`).
    """

    kernel_centers: Float[Array, "kp d"]
    kernel_cov: Float[Array, "d d"]
    kde_counts: Float[Array, " kp"]
    kde_err: Float[Array, " kp"]
    fourier_positions: Float[Array, "kf d"]
    fourier_counts: Complex[Array, " kf"]
    fourier_err: Complex[Array, " kf"]
    training_mean: Float[Array, " d"]
    training_sum_of_weights: Float[Array, ""]
    num_eval_kernels: int = eqx.field(static=True)
    num_eval_fourier_positions: int = eqx.field(static=True)
    bandwidth_factor: float = eqx.field(static=True, default=1.0)
    fourier_range_factor: float = eqx.field(static=True, default=1.0)
    covariant_kernels: bool = eqx.field(static=True, default=False)
    inverse_density_weight_power: float = eqx.field(static=True, default=0.0)
    seed: int = eqx.field(static=True, default=0)

    # --- derived sizes ----------------------------------------------------------

    @property
    def ndim(self) -> int:
        """Dimensionality of the training data."""
        return int(self.kernel_centers.shape[1])

    @property
    def num_pretrain_kernels(self) -> int:
        return int(self.kernel_centers.shape[0])

    @property
    def num_pretrain_fourier_positions(self) -> int:
        return int(self.fourier_positions.shape[0])

    @property
    def bandwidth(self) -> float:
        """Kernel bandwidth relative to the data's spread."""
        return bandwidth(self.num_eval_kernels, self.ndim, self.bandwidth_factor)

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_training_data(
        cls,
        training_x: ArrayLike,
        training_weights: ArrayLike | None = None,
        num_eval_kernels: int | None = None,
        num_eval_fourier_positions: int | None = None,
        num_pretrain_kernels: int | None = None,
        num_pretrain_fourier_positions: int | None = None,
        bandwidth_factor: float = 1.0,
        fourier_range_factor: float = 1.0,
        covariant_kernels: bool = False,
        inverse_density_weight_power: float = 0.0,
        num_idw_draws: int | None = None,
        chunk_size: int | None = None,
        seed: int = 0,
        comm: Any = None,
    ) -> KPretrainer:
        """Draw kernels and Fourier positions and measure them on the training data.

        Parameters
        ----------
        training_x : array (n_points, ndim)
            Training data (``(n_points,)`` is read as one dimension). Every
            rank of ``comm`` must pass the full, identical training data.
        training_weights : array (n_points,), optional
            Non-negative weight of each training point (default: all 1).
        num_eval_kernels : int, optional
            Kernels :class:`KCalc` draws per call (default ``10 * ndim``, or
            ``num_pretrain_kernels`` if that is smaller). It also sets the
            bandwidth (below).
        num_eval_fourier_positions : int, optional
            Fourier positions drawn per call (default ``10 * ndim``, or
            ``num_pretrain_fourier_positions`` if that is smaller).
        num_pretrain_kernels : int, optional
            Kernels pretrained here, to draw from (default ``300 *
            num_eval_kernels``).
        num_pretrain_fourier_positions : int, optional
            Fourier positions pretrained here (default ``300 *
            num_eval_fourier_positions``).
        bandwidth_factor : float (default 1.0)
            Scales the bandwidth ``num_eval_kernels ** (-1 / (ndim + 4)) *
            bandwidth_factor``. The kernel covariance is the weighted
            empirical covariance of the data times ``bandwidth ** 2``.
        fourier_range_factor : float (default 1.0)
            Fourier positions are uniform in ``[0, fourier_range_factor /
            std_i)`` along each dimension ``i``.
        covariant_kernels : bool (default False)
            Use the full empirical covariance for the kernels. By default only
            its diagonal is used (axis-aligned kernels), which stays well
            conditioned when the data are nearly degenerate.
        inverse_density_weight_power : float (default 0.0)
            When > 0, kernel centres are importance-resampled from
            ``num_idw_draws`` candidates with weights ``density **
            -inverse_density_weight_power``, so low-density regions get more
            kernels. At 0 they follow the training density.
        num_idw_draws : int, optional
            Candidates for that resampling (default ``10 *
            num_pretrain_kernels``; at least ``num_pretrain_kernels``).
        chunk_size : int, optional
            Kernels (or Fourier positions, or candidates) evaluated per block
            (default 1024). Memory is bounded per block; the training points
            are streamed through it in small chunks.
        seed : int (default 0)
            Seed of every random draw. The same seed gives the same
            pretrainer, whatever the number of ranks.
        comm : mpi4py communicator, optional
            Spread the work over the ranks of ``comm``: each computes some
            blocks, then all of them gather every block. Every rank ends with
            the same pretrainer.

        Returns
        -------
        KPretrainer
        """
        x = _checks.points(training_x, "training_x")
        n, ndim = x.shape
        if n == 0:
            raise ValueError("training_x is empty: it must hold at least two points")
        if ndim == 0:
            raise ValueError("training_x must have at least one dimension (got shape (n, 0))")
        x_np = np.asarray(x)
        bad = ~np.all(np.isfinite(x_np), axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"training_x contains NaN or infinite values in {rows.size} row(s), "
                f"e.g. row(s) {rows[:5].tolist()}; remove them first"
            )
        w = _checks.weights(training_weights, n, "training_weights", x.dtype)
        w = jnp.ones(n, x.dtype) if w is None else w

        num_eval_kernels, num_pretrain_kernels = _eval_and_pretrain_counts(
            num_eval_kernels, num_pretrain_kernels, ndim, "kernels"
        )
        num_eval_fourier_positions, num_pretrain_fourier_positions = _eval_and_pretrain_counts(
            num_eval_fourier_positions, num_pretrain_fourier_positions, ndim, "fourier_positions"
        )
        if num_pretrain_kernels < num_eval_kernels:
            raise ValueError(
                f"num_pretrain_kernels ({num_pretrain_kernels}) must be >= num_eval_kernels "
                f"({num_eval_kernels}): kernels are drawn without replacement"
            )
        if num_pretrain_fourier_positions < num_eval_fourier_positions:
            raise ValueError(
                f"num_pretrain_fourier_positions ({num_pretrain_fourier_positions}) must be >= "
                f"num_eval_fourier_positions ({num_eval_fourier_positions}): positions are drawn "
                "without replacement"
            )
        bandwidth_factor = _checks.real_number(bandwidth_factor, "bandwidth_factor", positive=True)
        fourier_range_factor = _checks.real_number(fourier_range_factor, "fourier_range_factor", positive=True)
        inverse_density_weight_power = _checks.real_number(
            inverse_density_weight_power, "inverse_density_weight_power", nonnegative=True
        )
        covariant_kernels = bool(covariant_kernels)
        num_idw_draws = _checks.optional_positive_int(num_idw_draws, "num_idw_draws", 10 * num_pretrain_kernels)
        if inverse_density_weight_power > 0 and num_idw_draws < num_pretrain_kernels:
            raise ValueError(
                f"num_idw_draws ({num_idw_draws}) must be >= num_pretrain_kernels ({num_pretrain_kernels})"
            )
        block = _checks.optional_positive_int(chunk_size, "chunk_size", _DEFAULT_BLOCK)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        seed = int(seed)
        if comm is not None:
            comm = _comm.default_comm(comm)
            _check_same_data_on_ranks(x_np, np.asarray(w), comm)

        # --- kernel shape (host float64: small, exact and the same on every rank) ---
        w64 = np.asarray(w, np.float64)
        x64 = x_np.astype(np.float64)
        sum_w = w64.sum()
        if not sum_w > 0:
            raise ValueError("training_weights sum to zero: at least two points need positive weight")
        mean = (w64 @ x64) / sum_w
        resid = x64 - mean
        # Unbiased weighted covariance (as np.cov with aweights).
        norm = sum_w - (w64 @ w64) / sum_w
        if not norm > 0:
            raise ValueError(
                "training data need at least two points with positive weight to estimate a covariance"
            )
        cov = (resid * w64[:, None]).T @ resid / norm
        var = np.diag(cov).copy()
        if not np.all(var > 0):
            raise ValueError(f"training_x has zero variance along dimension(s) {np.flatnonzero(var <= 0).tolist()}")
        bw = bandwidth(num_eval_kernels, ndim, bandwidth_factor)
        kernel_cov = (cov if covariant_kernels else np.diag(var)) * bw**2
        try:
            chol = np.linalg.cholesky(kernel_cov)
        except np.linalg.LinAlgError:
            raise ValueError(
                "the covariance of training_x is singular, so covariant_kernels=True cannot be "
                "used; pass covariant_kernels=False (axis-aligned kernels)"
            ) from None
        whitening = np.linalg.inv(chol)
        log_norm = -0.5 * ndim * math.log(2 * math.pi) - float(np.sum(np.log(np.diag(chol))))
        dtype = x.dtype
        mean, chol_j, whitening = (jnp.asarray(a, dtype) for a in (mean, chol, whitening))

        key_pick, key_noise, key_fourier, key_idw = jax.random.split(jax.random.key(seed), 4)
        evaluate = functools.partial(_evaluate_blocks, x=x, w=w, block=block, comm=comm)

        # --- kernel centres: draws from the Gaussian KDE of the data ----------------
        num_draws = num_idw_draws if inverse_density_weight_power > 0 else num_pretrain_kernels
        draws = _kde_draws(key_pick, key_noise, x, w, chol_j, num_draws)
        if inverse_density_weight_power > 0:
            # Importance resampling: a candidate's density (up to a constant)
            # is its kernel count; weight it by density ** -power.
            dens = jnp.asarray(evaluate(_density_block, draws, mean, whitening)[0], x.dtype)
            tiny = jnp.finfo(dens.dtype).tiny
            logp = -inverse_density_weight_power * jnp.log(jnp.maximum(dens, tiny))
            prob = jnp.exp(logp - jnp.max(logp))
            chosen = jax.random.choice(
                key_idw, num_draws, (num_pretrain_kernels,), replace=False, p=prob / prob.sum()
            )
            centers = draws[chosen]
        else:
            centers = draws

        # --- Fourier positions: uniform in [0, range / std) ---------------------------
        kmax = jnp.asarray(fourier_range_factor / np.sqrt(var), dtype)
        positions = _uniform(key_fourier, kmax, num_pretrain_fourier_positions)

        # --- training statistics (accumulated in float64 on the host) ----------------
        scale = np.exp(log_norm)
        sums, squares = evaluate(_kde_block, centers, mean, whitening)
        kde_counts = jnp.asarray(sums * scale, x.dtype)
        kde_err = jnp.asarray(np.sqrt(squares) * scale, x.dtype)
        re, im, re2 = evaluate(_fourier_block, positions, mean)
        total_w2 = float(w64 @ w64)
        err_re = np.sqrt(np.maximum(0.5 * (total_w2 + re2), 0.0))
        err_im = np.sqrt(np.maximum(0.5 * (total_w2 - re2), 0.0))
        cdtype = jnp.result_type(x.dtype, jnp.complex64)
        fourier_counts = jnp.asarray(re + 1j * im, cdtype)
        fourier_err = jnp.asarray(err_re + 1j * err_im, cdtype)

        return cls(
            kernel_centers=centers,
            kernel_cov=jnp.asarray(kernel_cov, dtype),
            kde_counts=kde_counts,
            kde_err=kde_err,
            fourier_positions=positions,
            fourier_counts=fourier_counts,
            fourier_err=fourier_err,
            training_mean=mean,
            training_sum_of_weights=jnp.asarray(sum_w, dtype),
            num_eval_kernels=num_eval_kernels,
            num_eval_fourier_positions=num_eval_fourier_positions,
            bandwidth_factor=bandwidth_factor,
            fourier_range_factor=fourier_range_factor,
            covariant_kernels=covariant_kernels,
            inverse_density_weight_power=inverse_density_weight_power,
            seed=seed,
        )

    # --- persistence ----------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write to an ``.npz`` file (no pickles; reload with :meth:`load`).

        As with ``numpy.savez``, ``.npz`` is appended to a path without it.
        """
        data = {name: np.asarray(getattr(self, name)) for name in _ARRAY_FIELDS}
        data.update({name: np.asarray(getattr(self, name)) for name in _STATIC_FIELDS})
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        data.update(__format__=np.asarray(_FORMAT), __version__=np.asarray(_VERSION))
        _npz.write_atomically(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> KPretrainer:
        """Read a pretrainer written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is not a KPretrainer file: not an ``.npz``, no format
            marker, missing or unexpected fields, or fields of the wrong shape
            or type.
        """
        path = os.fspath(path)
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path = path + ".npz"
        fields = _npz.read(path, "a KPretrainer file")
        return cls._from_fields(fields, path)

    @classmethod
    def _from_fields(cls, fields: dict, path: str) -> KPretrainer:
        def fail(msg):
            raise ValueError(f"{path!r} is not a valid KPretrainer file: {msg}")

        marker = fields.get("__format__")
        if marker is None or marker.shape != () or marker.dtype.kind != "U" or str(marker) != _FORMAT:
            fail(f"no {_FORMAT!r} format marker")
        version = fields.get("__version__")
        if version is None or version.shape != () or version.dtype.kind not in "iu":
            fail("no format version")
        if int(version) != _VERSION:
            fail(f"format version {int(version)} is not supported (this diffopt reads version {_VERSION})")
        expected = {"__format__", "__version__", *_ARRAY_FIELDS, *_STATIC_FIELDS}
        missing = sorted(expected - fields.keys())
        extra = sorted(fields.keys() - expected)
        if missing:
            fail(f"missing field(s) {missing}")
        if extra:
            fail(f"unexpected field(s) {extra}")

        centers = fields["kernel_centers"]
        if centers.ndim != 2 or centers.shape[1] < 1:
            fail(f"kernel_centers must have shape (num_pretrain_kernels, ndim), got {centers.shape}")
        kp, ndim = centers.shape
        kf = fields["fourier_positions"].shape[0] if fields["fourier_positions"].ndim == 2 else -1
        shapes = {
            "kernel_centers": ((kp, ndim), "f"),
            "kernel_cov": ((ndim, ndim), "f"),
            "kde_counts": ((kp,), "f"),
            "kde_err": ((kp,), "f"),
            "fourier_positions": ((kf, ndim), "f"),
            "fourier_counts": ((kf,), "c"),
            "fourier_err": ((kf,), "c"),
            "training_mean": ((ndim,), "f"),
            "training_sum_of_weights": ((), "f"),
        }
        for name, (shape, kind) in shapes.items():
            arr = fields[name]
            if arr.shape != shape:
                fail(f"{name} has shape {arr.shape}, expected {shape}")
            if arr.dtype.kind != kind:
                fail(f"{name} has dtype {arr.dtype}, expected a {'complex' if kind == 'c' else 'float'} array")
        kinds = {int: "iu", float: "f", bool: "b"}
        static = {}
        for name, typ in _STATIC_FIELDS.items():
            arr = fields[name]
            if arr.shape != () or arr.dtype.kind not in kinds[typ]:
                fail(f"{name} must be a scalar {typ.__name__}, got dtype {arr.dtype} and shape {arr.shape}")
            static[name] = typ(arr.item())
        for name, size in (("num_eval_kernels", kp), ("num_eval_fourier_positions", kf)):
            if not 1 <= static[name] <= size:
                fail(f"{name}={static[name]} must be between 1 and {size}")
        arrays = {name: jnp.asarray(fields[name]) for name in _ARRAY_FIELDS}
        return cls(**arrays, **static)


def _eval_and_pretrain_counts(num_eval, num_pretrain, ndim: int, what: str) -> tuple[int, int]:
    """How many items (kernels or Fourier positions) to draw per call and to pretrain.

    Defaults: ``10 * ndim`` per call and 300 times that pretrained. When only
    the pretrained number is given and it is smaller than the default per-call
    number, the per-call default shrinks to it (diffopt 2.0 accepted
    ``num_pretrain_kernels=10`` alone).
    """
    num_eval = None if num_eval is None else _checks.positive_int(num_eval, f"num_eval_{what}")
    num_pretrain = None if num_pretrain is None else _checks.positive_int(num_pretrain, f"num_pretrain_{what}")
    if num_eval is None:
        num_eval = 10 * ndim if num_pretrain is None else min(10 * ndim, num_pretrain)
    if num_pretrain is None:
        num_pretrain = 300 * num_eval
    return num_eval, num_pretrain


def bandwidth(num_eval_kernels: int, ndim: int, bandwidth_factor: float) -> float:
    """Kernel bandwidth in units of the data's standard deviation (Scott-like)."""
    return num_eval_kernels ** (-1.0 / (ndim + 4)) * bandwidth_factor


@functools.partial(jax.jit, static_argnums=5)
def _kde_draws(key_pick, key_noise, x, w, chol, num):
    """``num`` draws from the Gaussian KDE: a point picked by weight, plus kernel noise."""
    picks = jax.random.choice(key_pick, x.shape[0], (num,), p=w / jnp.sum(w))
    noise = jax.random.normal(key_noise, (num, x.shape[1]), x.dtype)
    return x[picks] + _matmul(noise, chol.T)


@functools.partial(jax.jit, static_argnums=2)
def _uniform(key, upper, num):
    return jax.random.uniform(key, (num, upper.shape[0]), upper.dtype) * upper


# Blocks of pretrained items meet fixed-size chunks of training points, so
# one compiled function serves every block, every data set of the same
# dimension, and every rank. Each returns sums over its points (additive).
_POINT_CHUNK = 4096


@jax.jit
def _density_block(cands, x, w, mean, whitening):
    return gaussian_kernel_sums_and_squares(x, w, _matmul(cands - mean, whitening.T), whitening, mean)[0][None]


@jax.jit
def _kde_block(centers, x, w, mean, whitening):
    return jnp.stack(gaussian_kernel_sums_and_squares(x, w, _matmul(centers - mean, whitening.T), whitening, mean))


@jax.jit
def _fourier_block(kvecs, x, w, mean):
    return jnp.stack(fourier_sums_and_squares(x, w, kvecs, mean))


def _evaluate_blocks(fn, items: jax.Array, *args, x, w, block: int, comm) -> np.ndarray:
    """``fn(items, x, w, *args)`` summed over chunks of points, computed block by block.

    ``fn`` maps a ``(block, ...)`` slice of items and a chunk of points to
    ``(m, block)`` sums. The blocks are spread over the ranks of ``comm`` and
    gathered; every block and chunk is zero-padded to one shape.
    """
    num = items.shape[0]
    nblocks = -(-num // block)
    items = _pad_rows(items, nblocks * block)
    npts = x.shape[0]
    nchunks = -(-npts // _POINT_CHUNK)
    # Zero-weight padding: padded points add nothing to any sum.
    x = _pad_rows(x, nchunks * _POINT_CHUNK)
    w = _pad_rows(w, nchunks * _POINT_CHUNK)

    def one_block(i):
        item = items[i * block : (i + 1) * block]
        total = 0.0
        for j in range(nchunks):
            sl = slice(j * _POINT_CHUNK, (j + 1) * _POINT_CHUNK)
            total = total + np.asarray(fn(item, x[sl], w[sl], *args), dtype=np.float64)
        return total

    nranks = 1 if comm is None else comm.size
    rank = 0 if comm is None else comm.rank
    mine = {i: one_block(i) for i in range(rank, nblocks, nranks)}
    if nranks > 1:
        gathered = _comm.allgather(mine, comm)
        mine = {i: out for part in gathered for i, out in part.items()}
    return np.concatenate([mine[i] for i in range(nblocks)], axis=1)[:, :num]


def _pad_rows(a, rows):
    pad = rows - a.shape[0]
    return a if pad == 0 else jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])


def _check_same_data_on_ranks(x: np.ndarray, w: np.ndarray, comm) -> None:
    # Cheap fingerprint: every rank must hold the full, identical data.
    stamp = (x.shape, float(np.sum(x, dtype=np.float64)), float(np.sum(w, dtype=np.float64)))
    stamps = _comm.allgather(stamp, comm)
    if any(s != stamps[0] for s in stamps):
        raise ValueError(
            "training_x (or training_weights) differ across MPI ranks: with comm, every rank "
            "must pass the full, identical training data"
        )
