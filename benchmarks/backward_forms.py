"""How XLA compiles the backward pass of kdescent's sums, written in several forms.

    python benchmarks/backward_forms.py [--npoints 10000000] [--only 1,3]

A GPU probe for issue 15. ``benchmarks/profile_kdescent.py`` showed that on
a GPU the per-point cotangents of the kernel sums are computed in two steps:
the ``N x K`` terms are written to memory, then read back by a few row
reductions (one per output). This script writes the derivative of both sums
in plain JAX (3-D, 32 kernels, one block, the block recomputed in the
backward pass, as in ``diffopt.kdescent._kernels``), in forms whose
transposes differ, and times each ``value_and_grad`` with the scratch memory
XLA planned (an ``N x K`` float32 array is 1.28 GB at N = 1e7) and the
busiest kernels:

- ``elementwise``: the package's tangent (a few reductions per point after
  transposition);
- ``packed dot``: the tangent as one product ``terms^T @ E`` with ``E`` the
  ``D + 1`` (kernel counts) or ``D`` (ECF) per-point tangent components, so
  that its transpose is one ``N x K`` by ``K x (D + 1)`` product;
- ``one reduce``: the same contraction written elementwise over an
  ``N x (D + 1) x K`` block, whose transpose is a single reduction;
- ``offset cos`` (ECF): cosine and sine as one ``cos(k2 . y + phi)`` over
  ``2K`` columns, the tangent a packed product of its slope.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import _median_time
from profile_kdescent import print_busiest_kernels

HIGHEST = jax.lax.Precision.HIGHEST
NDIM, NKERNELS = 3, 32


def _sum_with_tangent(primal, tangent):
    """``primal(x)`` with the derivative ``tangent(x, dx)``, recomputed from x
    in the backward pass (``jax.checkpoint``, as the package does)."""

    @jax.custom_jvp
    def f(x):
        return primal(x)

    @f.defjvp
    def f_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return jax.checkpoint(lambda x, dx: (primal(x), tangent(x, dx)))(x, dx)

    return f


# --- kernel counts: sum_n exp(-|u_n - v_k|^2 / 2) ----------------------------------


def _gauss_terms(u, v):
    sq = 0.0
    for d in range(NDIM):
        sq = sq + (u[:, None, d] - v[None, :, d]) ** 2
    return jnp.exp(-0.5 * sq)


def _gauss_parts(u, du, v):
    """E (N, D + 1) and V1 (K, D + 1) with ``dp_nk = p_nk V1_k . E_n``."""
    e = jnp.concatenate([du, -jnp.sum(u * du, axis=1, keepdims=True)], axis=1)
    v1 = jnp.concatenate([v, jnp.ones((v.shape[0], 1), v.dtype)], axis=1)
    return e, v1


def gauss(form, v):
    primal = lambda u: jnp.sum(_gauss_terms(u, v), axis=0)

    def tangent(u, du):
        p = _gauss_terms(u, v)
        if form == "elementwise":
            g = 0.0
            for d in range(NDIM):
                g = g + du[:, None, d] * v[None, :, d]
            return jnp.sum(p * (g - jnp.sum(u * du, axis=1)[:, None]), axis=0)
        e, v1 = _gauss_parts(u, du, v)
        if form == "packed dot":
            return jnp.sum(v1 * jnp.matmul(p.T, e, precision=HIGHEST), axis=1)
        if form == "one reduce":
            return jnp.sum(p[:, None, :] * v1.T[None, :, :] * e[:, :, None], axis=(0, 1))
        raise ValueError(form)

    return _sum_with_tangent(primal, tangent)


# --- ECF values: sum_n (cos, sin)(k . y_n) --------------------------------------------


def _phases(y, k):
    theta = 0.0
    for d in range(y.shape[1]):
        theta = theta + y[:, None, d] * k[None, :, d]
    return theta


def fourier(form, k):
    num = k.shape[0]
    k2 = jnp.concatenate([k, k], axis=0)  # (2K, D)
    if form == "offset cos":
        # [cos, sin](k . y) = cos(k2 . y + phi), phi = [0, -pi/2]: one elementwise expression (N, 2K).
        phi = jnp.concatenate([jnp.zeros(num), jnp.full(num, -np.pi / 2)]).astype(k.dtype)

        def primal(y):
            out = jnp.sum(jnp.cos(_phases(y, k2) + phi), axis=0)
            return out[:num], out[num:]

        def tangent(y, dy):
            # d cos(theta + phi) = cos(theta + phi + pi/2) dtheta, dtheta = k2 . dy
            slope = jnp.cos(_phases(y, k2) + (phi + np.pi / 2))
            t = jnp.sum(k2 * jnp.matmul(slope.T, dy, precision=HIGHEST), axis=1)
            return t[:num], t[num:]

        return _sum_with_tangent(primal, tangent)

    def primal(y):
        theta = _phases(y, k)
        return jnp.sum(jnp.cos(theta), axis=0), jnp.sum(jnp.sin(theta), axis=0)

    def tangent(y, dy):
        theta = _phases(y, k)
        s, c = jnp.sin(theta), jnp.cos(theta)
        if form == "elementwise":
            dtheta = _phases(dy, k)
            return -jnp.sum(s * dtheta, axis=0), jnp.sum(c * dtheta, axis=0)
        sc = jnp.concatenate([-s, c], axis=1)  # (N, 2K)
        if form == "packed dot":
            t = jnp.sum(k2 * jnp.matmul(sc.T, dy, precision=HIGHEST), axis=1)
        elif form == "one reduce":
            t = jnp.sum(sc[:, None, :] * k2.T[None, :, :] * dy[:, :, None], axis=(0, 1))
        else:
            raise ValueError(form)
        return t[:num], t[num:]

    return _sum_with_tangent(primal, tangent)


# --- the loss -------------------------------------------------------------------------


def make_loss(kde_form, ecf_form, wrt_points=False):
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=(NKERNELS, NDIM)), jnp.float32)
    k = jnp.asarray(rng.uniform(-1.0, 1.0, size=(NKERNELS, NDIM)), jnp.float32)
    truth = jnp.asarray(rng.uniform(size=3 * NKERNELS), jnp.float32)
    kde = gauss(kde_form, v) if kde_form else None
    ecf = fourier(ecf_form, k) if ecf_form else None

    def from_points(x):
        if kde is None and ecf is None:  # the parameters' own reduction, alone
            return jnp.sum(jnp.sin(x))
        out = 0.0
        if kde is not None:
            out = out + jnp.sum((kde(x) - truth[:NKERNELS]) ** 2)
        if ecf is not None:
            re, im = ecf(x)
            out = out + jnp.sum((re - truth[NKERNELS : 2 * NKERNELS]) ** 2 + (im - truth[2 * NKERNELS :]) ** 2)
        return out

    if wrt_points:  # one shift for every coordinate: its gradient is a plain sum
        return jax.jit(jax.value_and_grad(lambda p, z: from_points(p[0] + z)))
    return jax.jit(jax.value_and_grad(lambda p, z: from_points(p[:3] + p[3:] * z)))


CASES = [
    ("both, elementwise (the package's form)", "elementwise", "elementwise", False),
    ("both, packed dot", "packed dot", "packed dot", False),
    ("both, one reduce", "one reduce", "one reduce", False),
    ("both, elementwise, x = z + one scalar", "elementwise", "elementwise", True),
    ("no sums: sum(sin(x)), x = p[:3] + p[3:] z", None, None, False),
    ("kernel counts, elementwise", "elementwise", None, False),
    ("kernel counts, packed dot", "packed dot", None, False),
    ("kernel counts, one reduce", "one reduce", None, False),
    ("ECF, elementwise", None, "elementwise", False),
    ("ECF, packed dot", None, "packed dot", False),
    ("ECF, one reduce", None, "one reduce", False),
    ("ECF, offset cos (one cos over 2K, packed dot)", None, "offset cos", False),
    ("both, packed dot, ECF offset cos", "packed dot", "offset cos", False),
    ("both, packed dot, ECF offset cos, x = z + one scalar", "packed dot", "offset cos", True),
    ("kernel counts, packed dot, x = z + one scalar", "packed dot", None, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npoints", type=int, default=10_000_000)
    parser.add_argument("--calls", type=int, default=5, help="calls profiled per case")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated case numbers (from 1)")
    parser.add_argument("--out", default=None, help="folder for each case's optimised HLO")
    args = parser.parse_args()
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(3)))  # device start-up, not counted
    z = jnp.asarray(np.random.default_rng(1).standard_normal((args.npoints, NDIM), dtype=np.float32) * 0.5)
    params = jnp.array([0.1, -0.2, 0.3, 1.0, 0.9, 1.1], jnp.float32)
    print(f"N = {args.npoints:,d}, {NKERNELS} kernels, {NDIM}-D, on {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}")
    only = {int(i) for i in args.only.split(",") if i}
    reference = {}
    for number, (name, kde_form, ecf_form, wrt_points) in enumerate(CASES, start=1):
        if only and number not in only:
            continue
        t0 = time.perf_counter()
        compiled = make_loss(kde_form, ecf_form, wrt_points).lower(params, z).compile()
        compile_s = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"case{number}.hlo.txt").write_text(compiled.as_text())
        _, grad = jax.block_until_ready(compiled(params, z))
        ref = reference.setdefault((kde_form is None, ecf_form is None, wrt_points), grad)
        agree = float(jnp.max(jnp.abs(grad - ref)) / jnp.max(jnp.abs(ref)))
        call = functools.partial(compiled, params, z)
        per_call = _median_time(call, 10)
        print(f"\n{number}. {name}: compile {compile_s:.2f} s, temp {temp / 2**30:.2f} GiB, per call "
              f"{per_call * 1e3:.2f} ms; gradient vs the case's first form {agree:.1e}")
        print_busiest_kernels(call, args.calls, args.top, Path(tempfile.mkdtemp()))


if __name__ == "__main__":
    main()
