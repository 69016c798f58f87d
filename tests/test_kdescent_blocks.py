"""Platform-aware block sizes of kdescent's fused sums, tested on CPU by forcing each policy.

The GPU policy (one block up to a memory budget, recompute in the backward
pass, exact sine/cosine, elementwise tangents) must give the same numbers as
the CPU one; which one runs is decided when the computation is lowered.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffopt import kdescent
from diffopt.kdescent import _kernels, _pretrainer
from diffopt.kdescent._kernels import (
    block_policy,
    default_chunk_size,
    fourier_sums,
    gaussian_kernel_sums,
)

H200_BYTES = int(0.75 * 141e9)  # XLA's default 75% of an H200
CPU = block_policy("cpu")
GPU = block_policy("cuda", H200_BYTES)
# The GPU policy on a card so small that N x K no longer fits one block.
GPU_SMALL = block_policy("cuda", 2**26)
# The GPU policy with and without its barrier on the points' cotangents.
GPU_BARRIERS = [GPU, GPU._replace(separate_point_cotangents=False)]


@pytest.fixture(autouse=True)
def _on_the_cpu():
    """Compute and lower on the CPU, also on a machine with a GPU: these tests
    check the CPU lowering of each forced policy, and a jit lowers for the
    default device."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def test_policy_sizes():
    assert CPU.block_elements == 2**18 and CPU.fast_sincos and not CPU.remat_one_block
    assert default_chunk_size(32) == default_chunk_size(32, CPU) == 2**18 // 32
    # GPU: the block's arrays (16 float32 ones assumed) may use 1/8 of the memory.
    assert GPU.block_elements == H200_BYTES // 8 // 64
    assert GPU.remat_one_block and not GPU.fast_sincos and not GPU.matmul_tangents
    assert GPU.separate_point_cotangents and not CPU.separate_point_cotangents
    # The figure: N = 1e7 points, 30 kernels (padded to 32), in two blocks on an H200 ...
    chunk = default_chunk_size(32, GPU)
    assert _kernels._chunking(10_000_000, chunk)[0] == 2
    # ... and N = 5e6 in one.
    assert _kernels._chunking(5_000_000, chunk)[0] == 1
    assert 16 * 4 * chunk * 32 <= H200_BYTES / 8
    assert default_chunk_size(32, GPU_SMALL) == 2**18 // 32  # never below the CPU block
    assert block_policy("tpu").block_elements == 16 * 2**30 // 8 // 64  # no memory size: 16 GiB


def _problem(dtype, n=2003, ndim=3, k=13, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, ndim)) * [1.0, 2.0, 0.5] + 3.0
    w = rng.uniform(0.1, 2.0, size=n)
    whit = np.linalg.inv(np.linalg.cholesky(np.diag([0.4, 1.2, 0.2])))
    shift = x.mean(0)
    centres = (x[rng.choice(n, k)] - shift) @ whit.T
    kvecs = rng.uniform(0, 2, size=(k, ndim))
    return tuple(jnp.asarray(a, dtype) for a in (x, w, centres, whit, shift, kvecs))


def _loss(p, x, w, centres, whit, shift, kvecs, chunk_size=None):
    y = p[:3] + p[3:6] * x
    ww = w * jnp.exp(p[6])
    g = gaussian_kernel_sums(y, ww, centres, whit, shift, chunk_size=chunk_size)
    re, im = fourier_sums(y, ww, kvecs, shift, chunk_size=chunk_size)
    g0 = gaussian_kernel_sums(y, None, centres * p[7], whit, shift, chunk_size=chunk_size)
    return jnp.sum(jnp.sin(g)) + jnp.sum(re * im) + jnp.sum(jnp.cos(g0 / 100)) + jnp.sum(im**2) / 1e3


def _evaluate(policy, args, chunk_size=None, hessian=False):
    p = jnp.array([0.1, -0.2, 0.3, 1.0, 1.1, 0.9, 0.05, 1.0], args[0].dtype)
    loss = lambda p: _loss(p, *args, chunk_size=chunk_size)
    with _kernels._force_policy(policy):
        out = list(jax.jit(jax.value_and_grad(loss))(p))
        if hessian:  # forward over reverse mode
            out.append(jax.jit(jax.hessian(loss))(p))
    return out


def test_gpu_policy_agrees_with_cpu_float64():
    with jax.enable_x64(True):
        args = _problem(jnp.float64)
        want = _evaluate(CPU, args, hessian=True)
        # 700: the user's override.
        for policy, chunk_size in [(policy, None) for policy in GPU_BARRIERS] + [(GPU_SMALL, None), (GPU, 700)]:
            for got, ref in zip(_evaluate(policy, args, chunk_size, hessian=chunk_size is None), want):
                np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("change", [{"matmul_tangents": False}, {"fast_sincos": False}, {"remat_one_block": True},
                                    {"separate_point_cotangents": True}])
def test_each_policy_choice_agrees_float64(change):
    with jax.enable_x64(True):
        args = _problem(jnp.float64)
        for got, want in zip(_evaluate(CPU._replace(**change), args), _evaluate(CPU, args)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("policy", [*GPU_BARRIERS, GPU_SMALL])
def test_gpu_policy_agrees_with_cpu_float32(policy):
    args = _problem(jnp.float32)
    for got, want in zip(_evaluate(policy, args), _evaluate(CPU, args)):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-5 * scale)


def _lowered(policy, n, chunk_size=None, accelerator=None):
    args = (jax.ShapeDtypeStruct((8,), jnp.float32), jax.ShapeDtypeStruct((n, 3), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((30, 3), jnp.float32),
            jax.ShapeDtypeStruct((3, 3), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.float32),
            jax.ShapeDtypeStruct((30, 3), jnp.float32))
    fn = jax.jit(jax.value_and_grad(lambda p, *a: _loss(p, *a, chunk_size=chunk_size)))
    if policy is None:
        return fn.lower(*args)
    with _kernels._force_policy(policy):
        return fn.lower(*args)


def test_gpu_policy_runs_one_block_and_cpu_loops():
    n = 1_000_000
    assert "stablehlo.while" in _lowered(CPU, n).as_text()
    assert "stablehlo.while" not in _lowered(GPU, n).as_text()
    assert "stablehlo.while" in _lowered(GPU_SMALL, n).as_text()
    assert "stablehlo.while" in _lowered(GPU, n, chunk_size=100_000).as_text()


def test_gpu_policy_separates_the_point_cotangents():
    """Under the GPU policy the reverse pass of each of the loss's three sums
    writes the points' cotangents out through an optimisation barrier (see
    BlockPolicy.separate_point_cotangents); the CPU policy does not."""
    def barriers(policy):
        return _lowered(policy, 10_000).as_text().count("stablehlo.optimization_barrier")

    assert barriers(GPU) == barriers(GPU._replace(separate_point_cotangents=False)) + 3
    assert barriers(CPU._replace(separate_point_cotangents=True)) == barriers(CPU) + 3


def test_on_a_machine_with_a_gpu_the_cpu_still_runs_the_cpu_policy(monkeypatch):
    """With an accelerator present both policies are staged out
    (lax.platform_dependent) and lowering for the CPU keeps the CPU one."""
    monkeypatch.setattr(_kernels, "_accelerator_policy", lambda: GPU)
    n = 1_000_000
    assert "stablehlo.while" in _lowered(None, n).as_text()  # the CPU blocks, not one GPU block
    args = _problem(jnp.float32)
    p = jnp.array([0.1, -0.2, 0.3, 1.0, 1.1, 0.9, 0.05, 1.0], jnp.float32)
    assert "platform_index" in str(jax.make_jaxpr(jax.value_and_grad(lambda p: _loss(p, *args)))(p))
    got = jax.jit(jax.value_and_grad(lambda p: _loss(p, *args)))(p)
    got_hessian = jax.jit(jax.hessian(lambda p: _loss(p, *args)))(p)
    monkeypatch.setattr(_kernels, "_accelerator_policy", lambda: None)
    want = jax.jit(jax.value_and_grad(lambda p: _loss(p, *args)))(p)
    want_hessian = jax.jit(jax.hessian(lambda p: _loss(p, *args)))(p)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    # The Hessian's program is arranged a little differently (round-off).
    np.testing.assert_allclose(np.asarray(got_hessian), np.asarray(want_hessian), rtol=1e-6)


@pytest.mark.parametrize("which", ["kde", "fourier"])
def test_one_block_memory_bound(which):
    """block_policy sizes GPU blocks for 16 live block-sized float32 arrays
    per call. Compiled here as one block of N x K (XLA's CPU backend, which
    fuses less than its GPU one), a call differentiated with respect to the
    points, the weights and the kernels stays below that."""
    n, k = 1_000_000, 32

    def loss(p, z, w, kernels):
        x = p[:3] + p[3:6] * z
        zero, eye = jnp.zeros(3, jnp.float32), jnp.eye(3, dtype=jnp.float32)
        if which == "kde":
            return jnp.sum(gaussian_kernel_sums(x, w * p[6], kernels * p[7], eye, zero) ** 2)
        re, im = fourier_sums(x, w * p[6], kernels * p[7], zero)
        return jnp.sum(re**2 + im**2)

    args = (jax.ShapeDtypeStruct((8,), jnp.float32), jax.ShapeDtypeStruct((n, 3), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.float32), jax.ShapeDtypeStruct((30, 3), jnp.float32))
    with _kernels._force_policy(GPU):
        lowered = jax.jit(jax.value_and_grad(loss)).lower(*args)
    assert "stablehlo.while" not in lowered.as_text()
    temp = lowered.compile().memory_analysis().temp_size_in_bytes
    assert temp < _kernels._LIVE_BLOCK_ARRAYS * n * k * 4, temp / (n * k * 4)


def test_kcalc_agrees_between_policies():
    rng = np.random.default_rng(4)
    train = jnp.asarray(rng.normal(size=(3000, 3)) * [1.0, 2.0, 0.5], jnp.float32)
    model = train[:2500] * 1.1 + 0.2
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(train, seed=1))
    fn = lambda m: kcalc.reduced_chisq_loss(jax.random.key(2), m)
    out = {}
    for name, policy in (("cpu", CPU), ("gpu", GPU)):
        with _kernels._force_policy(policy):
            out[name] = jax.jit(jax.value_and_grad(fn))(model)
    np.testing.assert_allclose(float(out["gpu"][0]), float(out["cpu"][0]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["gpu"][1]), np.asarray(out["cpu"][1]), rtol=1e-4,
                               atol=1e-4 * float(jnp.max(jnp.abs(out["cpu"][1]))))


@pytest.mark.parametrize("policy", [CPU, GPU], ids=["cpu", "gpu"])
def test_far_sample_under_each_policy(policy):
    """A sample shifted by 1e20: finite losses and gradients, exactly zero for the kernel counts."""
    rng = np.random.default_rng(5)
    train = rng.normal(size=(500, 3)).astype(np.float32) * [1.0, 2.0, 3.0] + [1.0, 2.0, 3.0]
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
        train, num_eval_kernels=10, num_eval_fourier_positions=10))
    x = jnp.asarray(train)

    def losses(p):
        mk, tk = kcalc.compare_kde_counts(1, x + p)
        return jnp.mean((mk - tk) ** 2), kcalc.reduced_chisq_loss(2, x + p)

    far = jnp.array([1e20, -1e20, 1e20], jnp.float32)
    with _kernels._force_policy(policy):
        kde_grad = jax.jit(jax.grad(lambda p: losses(p)[0]))(far)
        chisq, chisq_grad = jax.jit(jax.value_and_grad(lambda p: losses(p)[1]))(far)
        near = jax.jit(lambda p: losses(p)[1])(jnp.zeros(3, jnp.float32))
    np.testing.assert_array_equal(np.asarray(kde_grad), 0.0)
    assert np.all(np.isfinite(np.asarray(chisq_grad))) and float(chisq) > float(near)


@pytest.mark.parametrize("policy", [CPU, GPU], ids=["cpu", "gpu"])
def test_every_matmul_is_full_precision(policy):
    """A GPU multiplies float32 matrices in TF32 unless told otherwise: every
    matrix product of the sums, their derivatives and a KCalc's whitening
    asks for full precision (10 dimensions: the products replace the unrolled
    loops beyond 8)."""
    rng = np.random.default_rng(0)
    whit = np.linalg.inv(np.linalg.cholesky(np.diag(rng.uniform(0.5, 2.0, 10))))
    args = tuple(jnp.asarray(a, jnp.float32) for a in (
        rng.normal(size=(503, 10)), rng.uniform(0.1, 2.0, 503), rng.normal(size=(7, 10)), whit,
        rng.normal(size=10), rng.uniform(-2, 2, size=(7, 10))))

    def loss(x, w, centres, whit, shift, kvecs):
        g = gaussian_kernel_sums(x, w, centres, whit, shift)
        re, im = fourier_sums(x, w, kvecs, shift)
        return jnp.sum(g**2) + jnp.sum(re * im)

    grads = jax.value_and_grad(loss, argnums=range(6))
    hvp = lambda *a: jax.jvp(lambda x: grads(x, *a[1:])[1][0], (a[0],), (a[0],))
    texts = []
    with _kernels._force_policy(policy):
        for fn in (grads, hvp):
            texts.append(jax.jit(fn).lower(*args).as_text())
    train = rng.normal(size=(400, 10)).astype(np.float32)
    pre = kdescent.KPretrainer.from_training_data(train, num_eval_kernels=5, num_eval_fourier_positions=5)
    texts.append(jax.jit(lambda pre: kdescent.KCalc(pre).whitened_centers).lower(pre).as_text())
    eye = jnp.eye(10)  # a Cholesky factor and a whitening matrix
    texts.append(_pretrainer._kde_draws.lower(jax.random.key(0), jax.random.key(1), train, train[:, 0], eye, 9)
                 .as_text())
    for block in (_pretrainer._kde_block, _pretrainer._density_block):
        texts.append(block.lower(train[:5], train, train[:, 0], train[0], eye).as_text())
    for text in texts:
        dots = [line for line in text.splitlines() if "dot_general" in line]
        assert dots
        assert all("precision = [HIGHEST, HIGHEST]" in line for line in dots), \
            [line for line in dots if "HIGHEST" not in line][:3]
