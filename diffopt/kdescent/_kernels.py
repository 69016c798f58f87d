"""Fused, blocked sums of Gaussian kernels and complex exponentials over points.

Both kdescent statistics are sums over points of a function of (point,
kernel) pairs:

- kernel counts ``sum_n w_n exp(-|u_n - v_k|^2 / 2)``, with ``u = W (x - s)``
  the whitened points and ``v`` the whitened kernel centres (all kernels
  share one covariance ``L L^T`` and ``W = L^-1``, so whitening once turns
  every kernel into a unit Gaussian), and
- ECF values ``sum_n w_n exp(i k . x_n)``.

A naive implementation materialises the ``N x K`` matrix of terms, and
reverse-mode AD keeps it alive for the backward pass. Here the points are
processed in blocks of ``chunk`` points by ``lax.scan``: each step builds one
``chunk x K`` block, reduces it to ``K`` sums and discards it.

The derivative is a ``custom_jvp`` whose tangent is a second blocked sum of
the same shape (linear in the tangents). JAX transposes it for reverse mode;
its block body is wrapped in ``jax.checkpoint``, so the backward pass
recomputes each block from the points instead of storing it. Forward mode
(``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) works as well.

Block sizes and a few code choices follow the platform the computation is
compiled for (see :func:`block_policy`). On CPU a block is cache-sized
(``2**18`` elements, 1 MB per float32 array). On a GPU or TPU a block may
use 1/8 of the device memory, which for most problems means one block and
no loop at all. Memory is ``O(N D)`` for the points plus a few block-sized
arrays, forward and backward.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float

__all__ = [
    "BlockPolicy",
    "block_policy",
    "default_chunk_size",
    "gaussian_kernel_sums",
    "gaussian_kernel_sums_and_squares",
    "fourier_sums",
    "fourier_sums_and_squares",
    "sincos",
]

# Up to this many dimensions, per-dimension broadcasts fuse into one loop;
# beyond it a matmul is cheaper.
_MAX_UNROLLED_DIMS = 8


# --- block policy ---------------------------------------------------------------

# CPU: elements in one chunk x K block, 256k float32 values (1 MB). Measured:
# smaller blocks pay the per-step overhead, larger ones fall out of cache.
_CPU_BLOCK_ELEMENTS = 2**18
# Accelerators: the block-sized arrays may use this fraction of the device
# memory ...
_DEVICE_MEMORY_FRACTION = 1 / 8
# ... counting this many live block-sized float32 arrays per call. Compiled
# as one block by XLA's CPU backend, which fuses less than its GPU one, a
# differentiated call (points, weights and kernels all varying) holds 8 to
# 10 of them (tests/test_kdescent_blocks.py::test_one_block_memory_bound).
_LIVE_BLOCK_ARRAYS = 16
# Assumed when a device does not report its memory.
_FALLBACK_DEVICE_MEMORY = 16 * 2**30


class BlockPolicy(NamedTuple):
    """How the fused sums block their points on one platform.

    The accelerator choices (one block, recompute, exact sine/cosine,
    elementwise tangents, separate point cotangents) follow from how GPUs
    work and are tested for equal results on CPU; their speed on a GPU is
    what ``benchmarks/bench_gpu.py`` measures, next to the alternatives.

    Attributes
    ----------
    block_elements : int
        Largest ``chunk x K`` block: ``chunk = max(1, block_elements // K)``
        points per step.
    remat_one_block : bool
        Recompute the block in the backward pass even when one block holds
        every point (on a GPU, recomputing a few exponentials should cost less
        than writing ``N x K`` residuals to device memory and reading them
        back).
    fast_sincos : bool
        Use the vectorised float32 sine/cosine polynomial (XLA's CPU
        ``sin``/``cos`` are scalar library calls; on accelerators they are
        native and exact, so they are used directly).
    matmul_tangents : bool
        Write the derivative's sums over a block as matrix products (measured
        fastest with XLA's CPU backend: 1.8x for the kernel counts) rather
        than elementwise, whose transpose is a few reductions that a GPU
        can fuse with the block's computation.
    separate_point_cotangents : bool
        Pass the points' tangents through ``lax.optimization_barrier``, whose
        transpose makes the reverse pass write the points' cotangents out as
        one ``N x D`` array before the caller's code uses them. Without it,
        XLA's GPU backend fused the per-coordinate columns they are summed
        from into the caller's reduction over the points (typically the
        parameters' gradient) and ran that reduction at about 0.3 TB/s: on
        an H200 at N = 1e7 the kde + Fourier ``value_and_grad`` took 6.30 ms
        without the barrier and 5.32 ms with it (``benchmarks/bench_gpu.py``).
    """

    block_elements: int
    remat_one_block: bool
    fast_sincos: bool
    matmul_tangents: bool
    separate_point_cotangents: bool = False


def block_policy(platform: str, memory_bytes: int | None = None) -> BlockPolicy:
    """The block policy for ``platform`` (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``).

    On CPU a block is 1 MB (``2**18`` float32 elements), independent of the
    problem. On other platforms a block may hold ``memory_bytes / 8 / 64``
    elements (``memory_bytes``: the memory XLA may use on the device; 16 GiB
    when not given), so that sixteen block-sized float32 arrays stay under
    1/8 of it (a differentiated call compiled as one block by XLA's CPU
    backend holds 8 to 10). Problems with
    ``N x K`` up to ``memory / 512`` run as a single block: about ``1.2e8``
    on an 80 GB card with JAX's default 75% memory fraction, ``2e8`` on a
    141 GB one.

    Parameters
    ----------
    platform : str
        ``"cpu"``, or an accelerator platform (``"cuda"``, ``"rocm"``,
        ``"tpu"``).
    memory_bytes : int, optional
        Usable device memory, for accelerators.
    """
    if platform == "cpu":
        return BlockPolicy(_CPU_BLOCK_ELEMENTS, remat_one_block=False, fast_sincos=True, matmul_tangents=True)
    memory = _FALLBACK_DEVICE_MEMORY if memory_bytes is None else int(memory_bytes)
    elements = int(memory * _DEVICE_MEMORY_FRACTION) // (4 * _LIVE_BLOCK_ARRAYS)
    return BlockPolicy(
        max(_CPU_BLOCK_ELEMENTS, elements),
        remat_one_block=True,
        fast_sincos=False,
        matmul_tangents=False,
        separate_point_cotangents=True,
    )


def default_chunk_size(num_kernels: int, policy: BlockPolicy | None = None) -> int:
    """Points per block for ``num_kernels`` kernels under ``policy`` (default: the CPU one)."""
    policy = block_policy("cpu") if policy is None else policy
    return int(max(256, policy.block_elements // max(int(num_kernels), 1)))


@functools.cache
def _accelerator_policy() -> BlockPolicy | None:
    """The policy of this machine's first GPU or TPU (None when it has none)."""
    for backend in ("cuda", "rocm", "tpu"):
        try:
            device = jax.devices(backend)[0]
        except RuntimeError:
            continue
        # XLA's allocator limit: the memory this process may use on it.
        limit = (device.memory_stats() or {}).get("bytes_limit")
        return block_policy(backend, int(limit) if limit else None)
    return None


_forced_policy: BlockPolicy | None = None


@contextlib.contextmanager
def _force_policy(policy: BlockPolicy) -> Iterator[None]:
    """Trace with ``policy`` whatever the platform (tests: the GPU policy on CPU)."""
    global _forced_policy
    previous, _forced_policy = _forced_policy, policy
    try:
        yield
    finally:
        _forced_policy = previous


class _Plan(NamedTuple):
    """A policy applied to one problem: its points per block, and its other choices."""

    chunk: int
    policy: BlockPolicy


def _plan(policy: BlockPolicy, num_kernels: int, chunk_size: int | None) -> _Plan:
    chunk = default_chunk_size(num_kernels, policy) if chunk_size is None else int(chunk_size)
    return _Plan(chunk, policy)


def _on_platform(fn: Callable[..., Any], num_kernels: int, chunk_size: int | None, *args: Any) -> Any:
    """``fn(plan, *args)`` with the plan of the platform the computation is compiled for.

    On a machine with a GPU or TPU, ``lax.platform_dependent`` traces one
    branch per policy and keeps only the one for the platform at lowering,
    so the choice follows where the computation runs, not the default
    backend. On a CPU-only machine only the CPU branch is traced.
    """
    if _forced_policy is not None:
        return fn(_plan(_forced_policy, num_kernels, chunk_size), *args)
    cpu = _plan(block_policy("cpu"), num_kernels, chunk_size)
    accelerator = _accelerator_policy()
    if accelerator is None:
        return fn(cpu, *args)
    accel = _plan(accelerator, num_kernels, chunk_size)
    return jax.lax.platform_dependent(*args, cpu=functools.partial(fn, cpu), default=functools.partial(fn, accel))


# --- sine and cosine -------------------------------------------------------------

# pi/2 split in three (Cody-Waite): n * _PIO2_HI is exact for |n| < 2**16,
# so the reduced angle keeps float32 accuracy for |theta| up to ~1e5.
_PIO2_HI = 1.5703125
_PIO2_MID = 4.837512969970703125e-4
_PIO2_LO = 7.54978995489188216e-8
# The polynomial path is used when every |theta| of a block is below this
# (2**16, well inside its range of validity); otherwise jnp.sin/jnp.cos.
_FAST_SINCOS_LIMIT = 65536.0


def _sincos_f32(theta):
    # XLA's float32 sin and cos are scalar libm calls on CPU (~5 ns each);
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


def _sincos_exact(theta):
    return jnp.sin(theta), jnp.cos(theta)


@jax.custom_jvp
def sincos(theta: Float[Array, "..."]) -> tuple[Float[Array, "..."], Float[Array, "..."]]:
    """Return ``(sin(theta), cos(theta))``, vectorised for float32.

    Float32 input whose largest ``|theta|`` is below ``2**16`` uses a
    polynomial evaluation that is ~10x faster than XLA's CPU ``sin``/``cos``
    and accurate to float32 resolution; larger (or non-finite) input, and
    other dtypes, use ``jnp.sin``/``jnp.cos``. The result therefore matches
    ``jnp.sin``/``jnp.cos`` over the whole float32 range.
    """
    if theta.dtype != jnp.float32:
        return _sincos_exact(theta)
    bound = jnp.max(jnp.abs(theta), initial=0.0)
    return jax.lax.cond(bound < _FAST_SINCOS_LIMIT, _sincos_f32, _sincos_exact, theta)


@sincos.defjvp
def _sincos_jvp(primals, tangents):
    (theta,), (dtheta,) = primals, tangents
    s, c = sincos(theta)
    return (s, c), (c * dtheta, -s * dtheta)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _sincos_of_dot(y: Array, kvecs: Array, fast: bool) -> tuple[Array, Array]:
    """``sincos(theta)`` with ``theta_nk = k_k . y_n``, for y (C, D) and kvecs (K, D).

    ``fast`` uses the float32 polynomial unconditionally: the caller has
    checked the range (see :func:`_chunked_sum`).
    """
    theta = _dot(y, kvecs)
    return _sincos_f32(theta) if fast and theta.dtype == jnp.float32 else _sincos_exact(theta)


def _sincos_of_dot_jvp(fast, primals, tangents):
    (y, kvecs), (dy, dk) = primals, tangents
    s, c = _sincos_of_dot(y, kvecs, fast)
    dtheta = jnp.zeros_like(s)
    if not _is_zero(dy):
        dtheta = dtheta + _dot(dy, kvecs)
    if not _is_zero(dk):
        dtheta = dtheta + _dot(y, dk)
    return (s, c), (c * dtheta, -s * dtheta)


_sincos_of_dot.defjvp(_sincos_of_dot_jvp, symbolic_zeros=True)


def _phase_bound(y: Array, kvecs: Array) -> Array:
    """``max_nd |y_nd| * max_k sum_d |k_kd|``, at least every ``|k_k . y_n|``
    (a reduction of ``y`` to one number: the cheapest pass over the points)."""
    return jnp.max(jnp.abs(y), initial=0.0) * jnp.max(jnp.sum(jnp.abs(kvecs), axis=1), initial=0.0)


# --- accurate phase factors exp(i k . s) --------------------------------------------


def _split_f32(a: Array) -> tuple[Array, Array]:
    """``a = hi + lo`` exactly, each with at most 12 significant bits."""
    hi = jax.lax.bitcast_convert_type(
        jax.lax.bitcast_convert_type(a, jnp.int32) & jnp.int32(-4096), jnp.float32
    )
    return hi, a - hi


@jax.custom_jvp
def _phase_factor(kvecs: Array, shift: Array) -> tuple[Array, Array]:
    """``(cos(k . s), sin(k . s))`` for kvecs (K, D), accurate to float32
    resolution even when ``k . s`` is large (data far from the origin).

    In float32, ``k . s`` itself would carry an absolute error of
    ``|k . s| * 6e-8`` (0.06 rad at 1e6). Splitting ``k`` and ``s`` into
    12-bit halves makes ``k_hi s_hi``, ``k_hi s_lo`` and ``k_lo s_hi`` exact
    float32 numbers; their sines and cosines (exact ``jnp.sin``/``jnp.cos``)
    are combined by the angle-addition formula. Only ``k_lo s_lo``, a
    ``2**-24`` part of the phase, is rounded.
    """
    if kvecs.dtype != jnp.float32:
        phase = _matmul(kvecs, shift)
        return jnp.cos(phase), jnp.sin(phase)
    k_hi, k_lo = _split_f32(kvecs)
    s_hi, s_lo = _split_f32(shift)
    angles = jnp.concatenate(
        [k_hi * s_hi, k_hi * s_lo, k_lo * s_hi, jnp.sum(k_lo * s_lo, axis=1, keepdims=True)], axis=1
    )
    # One complex product per kernel, reduced by XLA: written as a chain of
    # angle additions, each step reading both parts of the previous one, a
    # fused consumer (a stack of the results, say) evaluated the chain's
    # 2**(3D) paths (30 s in 10 dimensions).
    factors = jnp.prod(jax.lax.complex(jnp.cos(angles), jnp.sin(angles)), axis=1)
    return jnp.real(factors), jnp.imag(factors)


@_phase_factor.defjvp
def _phase_factor_jvp(primals, tangents):
    (kvecs, shift), (dk, ds) = primals, tangents
    c, s = _phase_factor(kvecs, shift)
    dphase = _matmul(dk, shift) + _matmul(kvecs, ds)
    return (c, s), (-s * dphase, c * dphase)


# --- small dense helpers --------------------------------------------------------


def _matmul(a: Array, b: Array) -> Array:
    """``a @ b`` in full precision on every platform.

    JAX's default lets a GPU multiply float32 matrices in TF32 (10-bit
    mantissas) and a TPU in bfloat16: distances expanded as ``|u|^2 + |v|^2 -
    2 u.v`` and phases ``k . s`` would lose most of their digits.
    """
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


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
    return jnp.maximum(uu + vv - 2.0 * _matmul(u, v.T), 0.0)


def _dot(y: Array, k: Array) -> Array:
    """``k_k . y_n`` for y (C, D) and k (K, D)."""
    if y.shape[1] <= _MAX_UNROLLED_DIMS:
        out = 0.0
        for d in range(y.shape[1]):
            out = out + y[:, None, d] * k[None, :, d]
        return out
    return _matmul(y, k.T)


def _matvec_rows(y: Array, m: Array) -> Array:
    """``y_n @ m.T`` for y (C, D) and a small m (D, D)."""
    ndim = y.shape[1]
    if ndim > _MAX_UNROLLED_DIMS:
        return _matmul(y, m.T)
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
    if w is None:
        return jnp.sum(block, axis=0)
    # Full precision (see _matmul): derivative sums cancel, so TF32 would not do.
    return jnp.tensordot(w, block, axes=1, precision=jax.lax.Precision.HIGHEST)


def _is_zero(t: Any) -> bool:
    return t is None or isinstance(t, SymbolicZero)


def _point_tangents(plan: _Plan, dx: Any, has_dx: bool) -> Array | None:
    """The points' tangents as the blocks read them (see ``separate_point_cotangents``)."""
    if not has_dx:
        return None
    return jax.lax.optimization_barrier(dx) if plan.policy.separate_point_cotangents else dx


# --- the block engine -----------------------------------------------------------


def _chunked_sum(
    body: Callable[..., Any],
    per_point: Sequence[Array | None],
    consts: Any,
    chunk_size: int,
    remat: bool = False,
    remat_one_block: bool = False,
    phases: tuple[Array, Array, Array] | None = None,
) -> Any:
    """``sum`` over chunks of ``body(*point_chunks, consts)``.

    ``per_point`` holds arrays whose leading axis runs over points (None
    entries are passed through as None). ``body`` must return a pytree of sums
    over its chunk. When N is not a multiple of the chunk, the arrays are
    zero-padded: the first of them must be the weights, or, when the weights
    are None, the caller passes weights so that the padding has zero weight.
    ``remat`` recomputes each chunk in the backward pass; with one chunk only
    when ``remat_one_block`` is also set.

    ``phases = (x, kvecs, shift)`` makes ``body`` take a first argument,
    ``fast``: whether the float32 sine/cosine polynomial is valid for every
    phase ``k . (x_n - shift)``. One cheap bound decides it for the whole call
    (a NaN bound takes the exact path), so a sample far from ``shift`` costs
    the exact path's time but gets its answer. The choice is a ``lax.cond``
    around the whole loop, taking the already split points: inside the loop
    it would stop XLA's CPU backend from running each block on several
    threads (measured 1.5x slower on 2 cores).
    """
    n = next(a.shape[0] for a in per_point if a is not None)
    num_chunks, chunk_size = _chunking(n, chunk_size)

    if num_chunks <= 1:  # includes n == 0: sums over no points are zeros
        xs = tuple(per_point)

        def run(body, xs, consts):
            return (jax.checkpoint(body) if remat and remat_one_block else body)(*xs, consts)

    else:
        pad = num_chunks * chunk_size - n

        def split(a):
            if a is None:
                return None
            if pad:
                a = jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])
            return a.reshape(num_chunks, chunk_size, *a.shape[1:])

        xs = tuple(split(a) for a in per_point)

        def run(body, xs, consts):
            fn = jax.checkpoint(body) if remat else body

            def step(acc, chunks):
                out = fn(*chunks, consts)
                return jax.tree_util.tree_map(jnp.add, acc, out), None

            first = tuple(None if a is None else a[0] for a in xs)
            out_shape = jax.eval_shape(body, *first, consts)
            init = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
            return jax.lax.scan(step, init, xs)[0]

    if phases is None:
        return run(body, xs, consts)
    x, kvecs, shift = phases
    fast_ok = _phase_bound(x - shift, kvecs) < _FAST_SINCOS_LIMIT
    return jax.lax.cond(
        fast_ok,
        lambda xs, consts: run(functools.partial(body, True), xs, consts),
        lambda xs, consts: run(functools.partial(body, False), xs, consts),
        xs,
        consts,
    )


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


# XLA vectorises the K axis of a block several times faster when K is a
# multiple of the SIMD width (measured 2.5x for K = 30 -> 32 on AVX-512), so
# kernels are padded with dummies whose sums are dropped.
_LANES = 8


def _pad_kernels(a: Array) -> Array:
    pad = -a.shape[0] % _LANES
    return a if pad == 0 else jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)])


# --- Gaussian kernel sums -------------------------------------------------------


def _gauss_block(xc, consts):
    centres, whitening, shift = consts
    u = _matvec_rows(xc - shift, whitening)
    return u, jnp.exp(-0.5 * _sq_dist(u, centres))


def _gauss_body(wc, xc, consts):
    return _wsum(wc, _gauss_block(xc, consts)[1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _gauss_sums(plan, weights, x, centres, whitening, shift):
    return _chunked_sum(_gauss_body, (weights, x), (centres, whitening, shift), plan.chunk)


def _gauss_du(u, xc, whitening, shift, dxc, dW, ds):
    """Tangent of the whitened points, ``du = W dx + dW (x - s) - W ds``, as (C, D)."""
    du = 0.0
    if dxc is not None:
        du = du + _matvec_rows(dxc, whitening)
    if dW is not None:
        du = du + _matvec_rows(xc - shift, dW)
    if ds is not None:
        du = du - _matmul(whitening, ds)[None, :]
    return jnp.broadcast_to(du, u.shape)


def _gauss_jvp(plan, primals, tangents):
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
        value = _wsum(wc, p)
        tangent = jnp.zeros_like(value)
        if has_dw:
            tangent = tangent + _wsum(dwc, p)
        if (has_du or has_dv) and plan.policy.matmul_tangents:
            a = p if wc is None else wc[:, None] * p
            if has_du:
                du = _gauss_du(u, xc, whitening, shift, dxc, dW, ds)
                # sum_n a_nk (v_k - u_n) . du_n
                tangent = tangent + jnp.sum(centres * _matmul(a.T, du), axis=1) - _matmul(jnp.sum(u * du, axis=1), a)
            if has_dv:
                # sum_n a_nk (v_k - u_n) . (-dv_k) = -dv_k . (v_k sum_n a_nk - sum_n a_nk u_n)
                tangent = tangent - jnp.sum(dv * (centres * jnp.sum(a, axis=0)[:, None] - _matmul(a.T, u)), axis=1)
        elif has_du or has_dv:
            # d p_nk = p_nk (v_k - u_n) . (du_n - dv_k), written elementwise:
            # its transpose is then a few reductions per block, no matmul.
            g = 0.0
            if has_du:
                du = _gauss_du(u, xc, whitening, shift, dxc, dW, ds)
                g = g + _dot(du, centres) - jnp.sum(u * du, axis=1)[:, None]
            if has_dv:
                g = g + _dot(u, dv) - jnp.sum(centres * dv, axis=1)[None, :]
            tangent = tangent + _wsum(wc, p * g)
        return {"value": value, "tangent": tangent}

    per_point = (weights, x, dw if has_dw else None, _point_tangents(plan, dx, has_dx))
    out = _chunked_sum(
        body, per_point, (consts, tconsts), plan.chunk, remat=True, remat_one_block=plan.policy.remat_one_block
    )
    return out["value"], out["tangent"]


_gauss_sums.defjvp(_gauss_jvp, symbolic_zeros=True)


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
        Points per block (default: from the platform, see :func:`block_policy`).

    Returns
    -------
    array (k,)
        Differentiable (forward and reverse mode) in every array argument.

    Notes
    -----
    Memory: the points plus a few ``chunk x k`` arrays, forward and
    backward. By default a block is ``2**18`` elements on CPU (1 MB per
    float32 array); on a GPU or TPU it is sized so that sixteen block-sized
    arrays fit in 1/8 of the device memory, and ``n x k`` up to that runs
    as one block (see :func:`block_policy`). A loss evaluating several
    statistics may hold the blocks of several calls at once.
    """
    num_kernels = centres.shape[0]

    def run(plan, weights, x, centres, whitening, shift):
        weights = _pad_weights(weights, x, plan.chunk)
        return _gauss_sums(plan, weights, x, _pad_kernels(centres), whitening, shift)[:num_kernels]

    return _on_platform(run, num_kernels, chunk_size, weights, x, centres, whitening, shift)


def _gauss_squares_body(wc, xc, consts):
    p = _gauss_block(xc, consts)[1]
    wp = p if wc is None else wc[:, None] * p
    return jnp.sum(wp, axis=0), jnp.sum(wp * wp, axis=0)


def gaussian_kernel_sums_and_squares(x, weights, centres, whitening, shift, *, chunk_size=None):
    """``(sum_n w_n p_nk, sum_n (w_n p_nk)^2)``: the training-side counts and
    the sum of squares behind their uncertainty (not differentiable by design:
    it only runs at pretraining)."""
    num_kernels = centres.shape[0]

    def run(plan, weights, x, centres, whitening, shift):
        weights = _pad_weights(weights, x, plan.chunk)
        consts = (_pad_kernels(centres), whitening, shift)
        sums, squares = _chunked_sum(_gauss_squares_body, (weights, x), consts, plan.chunk)
        return sums[:num_kernels], squares[:num_kernels]

    return _on_platform(run, num_kernels, chunk_size, weights, x, centres, whitening, shift)


# --- Fourier sums ---------------------------------------------------------------


def _fourier_chunked_sum(body, per_point, consts, plan: _Plan, phases, **kwargs):
    """:func:`_chunked_sum` of a Fourier ``body(fast, ...)``: with the range
    check where the polynomial sine/cosine may be used, else exact."""
    if plan.policy.fast_sincos and phases[0].dtype == jnp.float32:
        return _chunked_sum(body, per_point, consts, plan.chunk, phases=phases, **kwargs)
    return _chunked_sum(functools.partial(body, False), per_point, consts, plan.chunk, **kwargs)


def _fourier_body(fast, wc, xc, consts):
    kvecs, shift = consts
    s, c = _sincos_of_dot(xc - shift, kvecs, fast)
    return _wsum(wc, c), _wsum(wc, s)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fourier_shifted(plan, weights, x, kvecs, shift):
    return _fourier_chunked_sum(_fourier_body, (weights, x), (kvecs, shift), plan, (x, kvecs, shift))


def _fourier_jvp(plan, primals, tangents):
    weights, x, kvecs, shift = primals
    dw, dx, dk, ds = tangents
    has_dw, has_dx, has_dk, has_ds = (not _is_zero(t) for t in tangents)
    tconsts = (dk if has_dk else None, ds if has_ds else None)

    def body(fast, wc, xc, dwc, dxc, consts_all):
        (kvecs, shift), (dk, ds) = consts_all
        y = xc - shift
        s, c = _sincos_of_dot(y, kvecs, fast)
        value = (_wsum(wc, c), _wsum(wc, s))
        t_re, t_im = jnp.zeros_like(value[0]), jnp.zeros_like(value[1])
        if has_dw:
            t_re, t_im = t_re + _wsum(dwc, c), t_im + _wsum(dwc, s)
        if (has_dx or has_ds or has_dk) and plan.policy.matmul_tangents:
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
                t_re = t_re - jnp.sum(kvecs * _matmul(ws.T, dy), axis=1)
                t_im = t_im + jnp.sum(kvecs * _matmul(wc_.T, dy), axis=1)
            if has_dk:
                # dtheta_nk = y_n . dk_k
                t_re = t_re - jnp.sum(dk * _matmul(ws.T, y), axis=1)
                t_im = t_im + jnp.sum(dk * _matmul(wc_.T, y), axis=1)
        elif has_dx or has_ds or has_dk:
            # dtheta_nk = k_k . (dx_n - ds) + dk_k . y_n, written elementwise:
            # its transpose is then a few reductions per block, no matmul.
            dtheta = 0.0
            if has_dx:
                dtheta = dtheta + _dot(dxc, kvecs)
            if has_ds:
                dtheta = dtheta - _matmul(kvecs, ds)[None, :]
            if has_dk:
                dtheta = dtheta + _dot(y, dk)
            t_re = t_re - _wsum(wc, s * dtheta)
            t_im = t_im + _wsum(wc, c * dtheta)
        return {"value": value, "tangent": (t_re, t_im)}

    per_point = (weights, x, dw if has_dw else None, _point_tangents(plan, dx, has_dx))
    out = _fourier_chunked_sum(
        body,
        per_point,
        ((kvecs, shift), tconsts),
        plan,
        (x, kvecs, shift),
        remat=True,
        remat_one_block=plan.policy.remat_one_block,
    )
    return out["value"], out["tangent"]


_fourier_shifted.defjvp(_fourier_jvp, symbolic_zeros=True)


def _rotate(re, im, kvecs, shift):
    # Back to the true origin: multiply by exp(i k . s) (K values).
    cph, sph = _phase_factor(kvecs, shift)
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
    accurate in float32, when ``shift`` is near the points) and the result
    rotated back by ``exp(i k . shift)``, computed to float32 resolution
    however large ``k . shift`` is. Phases of any finite size give the
    ``jnp.sin``/``jnp.cos`` answer (large ones through the exact path).

    Parameters
    ----------
    x, weights :
        As for :func:`gaussian_kernel_sums`.
    kvecs : array (k, d)
        Wave vectors.
    shift : array (d,)
        Origin of the phases (for example the training data's mean).
    chunk_size : int, optional
        Points per block (default: from the platform, see :func:`block_policy`).

    Returns
    -------
    (real, imag) : pair of arrays (k,)
        Differentiable (forward and reverse mode) in every array argument.

    Notes
    -----
    Memory: as for :func:`gaussian_kernel_sums`.
    """
    num_kernels = kvecs.shape[0]

    def run(plan, weights, x, kvecs, shift):
        weights = _pad_weights(weights, x, plan.chunk)
        re, im = _fourier_shifted(plan, weights, x, _pad_kernels(kvecs), shift)
        return re[:num_kernels], im[:num_kernels]

    re, im = _on_platform(run, num_kernels, chunk_size, weights, x, kvecs, shift)
    return _rotate(re, im, kvecs, shift)


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

    def run(plan, weights, x, kvecs, shift):
        padded = _pad_kernels(kvecs)
        w2 = jnp.ones(x.shape[0], x.dtype) if weights is None else weights * weights

        def ecf(w, k):
            re, im = _fourier_chunked_sum(_fourier_body, (w, x), (k, shift), plan, (x, k, shift))
            return re[:num_kernels], im[:num_kernels]

        re, im = ecf(_pad_weights(weights, x, plan.chunk), padded)
        re2, im2 = ecf(w2, 2 * padded)
        return re, im, re2, im2

    re, im, re2, im2 = _on_platform(run, num_kernels, chunk_size, weights, x, kvecs, shift)
    re, im = _rotate(re, im, kvecs, shift)
    re2, _ = _rotate(re2, im2, 2 * kvecs, shift)
    return re, im, re2
