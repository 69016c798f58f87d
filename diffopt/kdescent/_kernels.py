"""Fused, chunked sums of Gaussian kernels and complex exponentials over points.

Both kdescent statistics are sums over points of a function of (point,
kernel) pairs:

- kernel counts ``sum_n w_n exp(-|u_n - v_k|^2 / 2)``, with ``u = W (x - s)``
  the whitened points and ``v`` the whitened kernel centres (all kernels
  share one covariance ``L L^T`` and ``W = L^-1``, so whitening once turns
  every kernel into a unit Gaussian), and
- ECF values ``sum_n w_n exp(i k . x_n)``.

A naive implementation materialises the ``N x K`` matrix of terms, and
reverse-mode AD keeps it alive for the backward pass. Here the points are
processed in chunks by ``lax.scan``: each step builds one ``chunk x K``
block, reduces it to ``K`` sums and discards it.

The derivative is a ``custom_jvp`` whose tangent is a second chunked sum of
the same shape (linear in the tangents). JAX transposes it for reverse mode;
its scan body is wrapped in ``jax.checkpoint``, so the backward pass
recomputes each block from the points instead of storing it. Memory is
``O(N D + chunk K)`` both ways, the backward pass is a few fused matmuls per
block, and forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) works
as well.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float

__all__ = [
    "default_chunk_size",
    "gaussian_kernel_sums",
    "gaussian_kernel_sums_and_squares",
    "fourier_sums",
    "fourier_sums_and_squares",
    "sincos",
]

# Elements in one chunk x K block: 256k float32 values (1 MB). Measured on
# CPU: smaller blocks pay the per-step overhead, larger ones fall out of
# cache.
_BLOCK_ELEMENTS = 2**18
# Up to this many dimensions, per-dimension broadcasts fuse into one loop;
# beyond it a matmul is cheaper.
_MAX_UNROLLED_DIMS = 8


def default_chunk_size(num_kernels: int) -> int:
    """Points per chunk so that a ``chunk x num_kernels`` block is ~1 MB."""
    return int(max(256, _BLOCK_ELEMENTS // max(int(num_kernels), 1)))


# --- fast sine and cosine -------------------------------------------------------

# pi/2 split in three (Cody-Waite): n * _PIO2_HI is exact for |n| < 2**16,
# so the reduced angle keeps float32 accuracy for |theta| up to ~1e5.
_PIO2_HI = 1.5703125
_PIO2_MID = 4.837512969970703125e-4
_PIO2_LO = 7.54978995489188216e-8


def _sincos_f32(theta):
    # XLA's float32 sin and cos are scalar libm calls (~5 ns each on CPU);
    # this reduction to [-pi/4, pi/4] plus Taylor polynomials vectorises and
    # fuses. Truncation errors are < 3e-8, below float32 resolution.
    n = jnp.round(theta * (2.0 / math.pi))
    r = ((theta - n * _PIO2_HI) - n * _PIO2_MID) - n * _PIO2_LO
    r2 = r * r
    s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880))))
    c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320))))
    q = n.astype(jnp.int32)
    odd = (q & 1) == 1
    sin = jnp.where(odd, c, s)
    cos = jnp.where(odd, s, c)
    sin = jnp.where((q & 2) == 2, -sin, sin)
    cos = jnp.where(((q + 1) & 2) == 2, -cos, cos)
    return sin, cos


@jax.custom_jvp
def sincos(theta: Float[Array, "..."]) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """Return ``(sin(theta), cos(theta))``, vectorised for float32.

    Float32 input uses a polynomial evaluation that is ~10x faster than
    XLA's CPU ``sin``/``cos`` and accurate to float32 resolution for
    ``|theta| < 1e5``; other dtypes use ``jnp.sin``/``jnp.cos``.
    """
    if theta.dtype == jnp.float32:
        return _sincos_f32(theta)
    return jnp.sin(theta), jnp.cos(theta)


@sincos.defjvp
def _sincos_jvp(primals, tangents):
    (theta,), (dtheta,) = primals, tangents
    s, c = sincos(theta)
    return (s, c), (c * dtheta, -s * dtheta)


# --- small dense helpers --------------------------------------------------------


def _sq_dist(u: Array, v: Array) -> Array:
    """``|u_n - v_k|^2`` for u (C, D) and v (K, D)."""
    if u.shape[1] <= _MAX_UNROLLED_DIMS:
        # Exact differences; XLA fuses the D terms into one elementwise loop.
        out = 0.0
        for d in range(u.shape[1]):
            out = out + (u[:, None, d] - v[None, :, d]) ** 2
        return out
    uu = jnp.sum(u * u, axis=1)[:, None]
    vv = jnp.sum(v * v, axis=1)[None, :]
    return jnp.maximum(uu + vv - 2.0 * (u @ v.T), 0.0)


def _dot(y: Array, k: Array) -> Array:
    """``k_k . y_n`` for y (C, D) and k (K, D)."""
    if y.shape[1] <= _MAX_UNROLLED_DIMS:
        out = 0.0
        for d in range(y.shape[1]):
            out = out + y[:, None, d] * k[None, :, d]
        return out
    return y @ k.T


def _matvec_rows(y: Array, m: Array) -> Array:
    """``y_n @ m.T`` for y (C, D) and a small m (D, D)."""
    ndim = y.shape[1]
    if ndim > _MAX_UNROLLED_DIMS:
        return y @ m.T
    # XLA's CPU dot is slow for tiny matrices; broadcasts fuse instead.
    cols = []
    for i in range(ndim):
        col = 0.0
        for j in range(ndim):
            col = col + y[:, j] * m[i, j]
        cols.append(col)
    return jnp.stack(cols, axis=1)


def _wsum(w: Array | None, block: Array) -> Array:
    """``sum_n w_n block_n...``."""
    return jnp.sum(block, axis=0) if w is None else jnp.tensordot(w, block, axes=1)


def _is_zero(t: Any) -> bool:
    return t is None or isinstance(t, SymbolicZero)


# --- the chunk engine -----------------------------------------------------------


def _chunked_sum(
    body: Callable[..., Any],
    per_point: Sequence[Array | None],
    consts: Any,
    chunk_size: int,
    remat: bool = False,
) -> Any:
    """``sum`` over chunks of ``body(*point_chunks, consts)``.

    ``per_point`` holds arrays whose leading axis runs over points (None
    entries are passed through as None). ``body`` must return a pytree of sums
    over its chunk. When N is not a multiple of the chunk, the arrays are
    zero-padded: the first of them must be the weights, or, when the weights
    are None, the caller passes weights so that the padding has zero weight.
    """
    n = next(a.shape[0] for a in per_point if a is not None)
    num_chunks, chunk_size = _chunking(n, chunk_size)
    if num_chunks <= 1:  # includes n == 0: sums over no points are zeros
        return body(*per_point, consts)

    pad = num_chunks * chunk_size - n

    def split(a):
        if a is None:
            return None
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
        return a.reshape(num_chunks, chunk_size, *a.shape[1:])

    xs = tuple(split(a) for a in per_point)
    fn = jax.checkpoint(body) if remat else body

    def step(acc, chunks):
        out = fn(*chunks, consts)
        return jax.tree_util.tree_map(jnp.add, acc, out), None

    first = tuple(None if a is None else a[0] for a in xs)
    out_shape = jax.eval_shape(body, *first, consts)
    init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
    acc, _ = jax.lax.scan(step, init, xs)
    return acc


def _chunking(n: int, chunk_size: int) -> tuple[int, int]:
    """``(num_chunks, chunk)`` covering ``n`` points with chunks of at most
    ``chunk_size``, balanced so that padding is under one row per chunk."""
    num_chunks = -(-n // max(1, int(chunk_size)))
    return num_chunks, (-(-n // num_chunks) if num_chunks else 0)


def _pad_weights(weights: Array | None, x: Array, chunk_size: int) -> Array | None:
    # Zero-weight padding needs explicit weights; only build them when the
    # last chunk is partial.
    n = x.shape[0]
    num_chunks, chunk = _chunking(n, chunk_size)
    if weights is None and num_chunks * chunk != n:
        return jnp.ones(n, x.dtype)
    return weights


# --- Gaussian kernel sums -------------------------------------------------------


def _gauss_block(xc, consts):
    centres, whitening, shift = consts
    u = _matvec_rows(xc - shift, whitening)
    return u, jnp.exp(-0.5 * _sq_dist(u, centres))


def _gauss_body(wc, xc, consts):
    return _wsum(wc, _gauss_block(xc, consts)[1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _gauss_sums(chunk_size, weights, x, centres, whitening, shift):
    return _chunked_sum(_gauss_body, (weights, x), (centres, whitening, shift), chunk_size)


def _gauss_jvp(chunk_size, primals, tangents):
    weights, x, centres, whitening, shift = primals
    dw, dx, dcentres, dwhitening, dshift = tangents
    has_dw, has_dx = not _is_zero(dw), not _is_zero(dx)
    has_dv, has_dW, has_ds = (not _is_zero(t) for t in (dcentres, dwhitening, dshift))
    has_du = has_dx or has_dW or has_ds
    consts = (centres, whitening, shift)
    tconsts = (
        dcentres if has_dv else None,
        dwhitening if has_dW else None,
        dshift if has_ds else None,
    )

    def body(wc, xc, dwc, dxc, consts_all):
        consts, (dv, dW, ds) = consts_all
        centres, whitening, shift = consts
        u, p = _gauss_block(xc, consts)
        out = {"value": _wsum(wc, p)}
        tangent = 0.0
        if has_dw:
            tangent = tangent + _wsum(dwc, p)
        if has_du or has_dv:
            a = p if wc is None else wc[:, None] * p
        if has_du:
            # du = W dx + dW (x - s) - W ds
            du = 0.0
            if has_dx:
                du = du + _matvec_rows(dxc, whitening)
            if has_dW:
                du = du + _matvec_rows(xc - shift, dW)
            if has_ds:
                du = du - (whitening @ ds)[None, :]
            du = jnp.broadcast_to(du, u.shape)
            # sum_n a_nk (v_k - u_n) . du_n
            tangent = tangent + jnp.sum(centres * (a.T @ du), axis=1) - jnp.sum(u * du, axis=1) @ a
        if has_dv:
            # sum_n a_nk (v_k - u_n) . (-dv_k), from two K-sized sums
            out["a"] = jnp.sum(a, axis=0)
            out["au"] = a.T @ u
        out["tangent"] = tangent if not isinstance(tangent, float) else jnp.zeros_like(out["value"])
        return out

    per_point = (weights, x, dw if has_dw else None, dx if has_dx else None)
    out = _chunked_sum(body, per_point, (consts, tconsts), chunk_size, remat=True)
    tangent = out["tangent"]
    if has_dv:
        tangent = tangent - jnp.sum(dcentres * (centres * out["a"][:, None] - out["au"]), axis=1)
    return out["value"], tangent


_gauss_sums.defjvp(_gauss_jvp, symbolic_zeros=True)


def _check_chunk(chunk_size: int | None, num_kernels: int) -> int:
    return default_chunk_size(num_kernels) if chunk_size is None else int(chunk_size)


# XLA vectorises the K axis of a block several times faster when K is a
# multiple of the SIMD width (measured 2.5x for K = 30 -> 32 on AVX-512), so
# kernels are padded with dummies whose sums are dropped.
_LANES = 8


def _pad_kernels(a: Array) -> Array:
    pad = -a.shape[0] % _LANES
    return a if pad == 0 else jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])


def gaussian_kernel_sums(
    x: Float[Array, "n d"],
    weights: Float[Array, " n"] | None,
    centres: Float[Array, "k d"],
    whitening: Float[Array, "d d"],
    shift: Float[Array, " d"],
    *,
    chunk_size: int | None = None,
) -> Float[Array, " k"]:
    """Unnormalised Gaussian kernel sums ``sum_n w_n exp(-|W (x_n - s) - c_k|^2 / 2)``.

    Parameters
    ----------
    x : array (n, d)
        Points.
    weights : array (n,) or None
        Point weights (None: all ones).
    centres : array (k, d)
        Kernel centres, already whitened: ``W (c - s)``.
    whitening : array (d, d)
        ``W = L^-1`` with ``L`` the Cholesky factor of the kernel covariance.
    shift : array (d,)
        Origin subtracted before whitening (keeps float32 numbers small).
    chunk_size : int, optional
        Points per scan step (default: a ~1 MB ``chunk x k`` block).

    Returns
    -------
    array (k,)
        Differentiable (forward and reverse mode) in every array argument.
    """
    num_kernels = centres.shape[0]
    chunk = _check_chunk(chunk_size, num_kernels)
    weights = _pad_weights(weights, x, chunk)
    return _gauss_sums(chunk, weights, x, _pad_kernels(centres), whitening, shift)[:num_kernels]


def _gauss_squares_body(wc, xc, consts):
    p = _gauss_block(xc, consts)[1]
    wp = p if wc is None else wc[:, None] * p
    return jnp.sum(wp, axis=0), jnp.sum(wp * wp, axis=0)


def gaussian_kernel_sums_and_squares(x, weights, centres, whitening, shift, *, chunk_size=None):
    """``(sum_n w_n p_nk, sum_n (w_n p_nk)^2)``: the training-side counts and
    the sum of squares behind their uncertainty (not differentiable by design:
    it only runs at pretraining)."""
    num_kernels = centres.shape[0]
    chunk = _check_chunk(chunk_size, num_kernels)
    weights = _pad_weights(weights, x, chunk)
    consts = (_pad_kernels(centres), whitening, shift)
    sums, squares = _chunked_sum(_gauss_squares_body, (weights, x), consts, chunk)
    return sums[:num_kernels], squares[:num_kernels]


# --- Fourier sums ---------------------------------------------------------------


def _fourier_body(wc, xc, consts):
    kvecs, shift = consts
    s, c = sincos(_dot(xc - shift, kvecs))
    return _wsum(wc, c), _wsum(wc, s)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fourier_shifted(chunk_size, weights, x, kvecs, shift):
    return _chunked_sum(_fourier_body, (weights, x), (kvecs, shift), chunk_size)


def _fourier_jvp(chunk_size, primals, tangents):
    weights, x, kvecs, shift = primals
    dw, dx, dk, ds = tangents
    has_dw, has_dx, has_dk, has_ds = (not _is_zero(t) for t in tangents)
    tconsts = (dk if has_dk else None, ds if has_ds else None)

    def body(wc, xc, dwc, dxc, consts_all):
        (kvecs, shift), (dk, ds) = consts_all
        y = xc - shift
        s, c = sincos(_dot(y, kvecs))
        out = {"value": (_wsum(wc, c), _wsum(wc, s))}
        t_re, t_im = 0.0, 0.0
        if has_dw:
            t_re, t_im = t_re + _wsum(dwc, c), t_im + _wsum(dwc, s)
        if has_dx or has_ds or has_dk:
            ws = s if wc is None else wc[:, None] * s
            wc_ = c if wc is None else wc[:, None] * c
        if has_dx or has_ds:
            # dtheta_nk = (dx_n - ds) . k_k
            dy = 0.0
            if has_dx:
                dy = dy + dxc
            if has_ds:
                dy = dy - ds[None, :]
            dy = jnp.broadcast_to(dy, y.shape)
            t_re = t_re - jnp.sum(kvecs * (ws.T @ dy), axis=1)
            t_im = t_im + jnp.sum(kvecs * (wc_.T @ dy), axis=1)
        if has_dk:
            # dtheta_nk = y_n . dk_k
            t_re = t_re - jnp.sum(dk * (ws.T @ y), axis=1)
            t_im = t_im + jnp.sum(dk * (wc_.T @ y), axis=1)
        zero = jnp.zeros_like(out["value"][0])
        out["tangent"] = tuple(zero if isinstance(t, float) else t for t in (t_re, t_im))
        return out

    per_point = (weights, x, dw if has_dw else None, dx if has_dx else None)
    out = _chunked_sum(body, per_point, ((kvecs, shift), tconsts), chunk_size, remat=True)
    return out["value"], out["tangent"]


_fourier_shifted.defjvp(_fourier_jvp, symbolic_zeros=True)


def _rotate(re, im, kvecs, shift):
    # Back to the true origin: multiply by exp(i k . s) (K values, so the
    # exact jnp.sin/cos is cheap here).
    phase = kvecs @ shift
    cph, sph = jnp.cos(phase), jnp.sin(phase)
    return re * cph - im * sph, re * sph + im * cph


def fourier_sums(
    x: Float[Array, "n d"],
    weights: Float[Array, " n"] | None,
    kvecs: Float[Array, "k d"],
    shift: Float[Array, " d"],
    *,
    chunk_size: int | None = None,
) -> tuple[Float[Array, " k"], Float[Array, " k"]]:
    """Real and imaginary parts of ``sum_n w_n exp(i k . x_n)``.

    The phases are computed relative to ``shift`` (keeping them small, hence
    accurate in float32) and the result rotated back by ``exp(i k . shift)``.

    Returns
    -------
    (real, imag) : pair of arrays (k,)
        Differentiable (forward and reverse mode) in every array argument.
    """
    num_kernels = kvecs.shape[0]
    chunk = _check_chunk(chunk_size, num_kernels)
    weights = _pad_weights(weights, x, chunk)
    re, im = _fourier_shifted(chunk, weights, x, _pad_kernels(kvecs), shift)
    return _rotate(re[:num_kernels], im[:num_kernels], kvecs, shift)


def fourier_sums_and_squares(x, weights, kvecs, shift, *, chunk_size=None):
    """ECF sums plus what their uncertainties need, as additive sums over points.

    Returns ``(re, im, re2)``: the real and imaginary parts of ``sum_n w_n
    exp(i k . x_n)`` and ``re2 = Re sum_n w_n^2 exp(2 i k . x_n)``. With
    ``cos^2 = (1 + cos 2 theta) / 2``, ``sum (w cos)^2 = (sum w^2 + re2) / 2``
    and ``sum (w sin)^2 = (sum w^2 - re2) / 2``, independent of the ``shift``
    used for accuracy. Not differentiable by design: it only runs at
    pretraining.
    """
    num_kernels = kvecs.shape[0]
    chunk = _check_chunk(chunk_size, num_kernels)
    padded = _pad_kernels(kvecs)

    def ecf(w, k):
        re, im = _chunked_sum(_fourier_body, (w, x), (k, shift), chunk)
        return _rotate(re[:num_kernels], im[:num_kernels], k[:num_kernels], shift)

    re, im = ecf(_pad_weights(weights, x, chunk), padded)
    w2 = jnp.ones(x.shape[0], x.dtype) if weights is None else weights * weights
    re2, _ = ecf(w2, 2 * padded)
    return re, im, re2
