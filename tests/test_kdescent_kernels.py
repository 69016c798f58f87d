"""kdescent's fused kernel and ECF sums, and KCalc's comparisons, against direct computations.

Float64 checks run inside ``jax.enable_x64(True)`` blocks, so they do not
change the precision of other tests in the session.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from diffopt import kdescent
from diffopt.kdescent._kernels import (
    fourier_sums,
    fourier_sums_and_squares,
    gaussian_kernel_sums,
    gaussian_kernel_sums_and_squares,
    sincos,
)


def _problem(rng, n=700, ndim=3, k=11):
    x = rng.normal(size=(n, ndim)) * [1.0, 2.0, 0.5][:ndim] + 3.0
    w = rng.uniform(0.1, 2.0, size=n)
    centres = x[rng.choice(n, k)] + rng.normal(size=(k, ndim)) * 0.3
    a = rng.normal(size=(ndim, ndim)) * 0.2
    cov = (a @ a.T + np.eye(ndim)) * 0.4
    kvecs = rng.uniform(0, 2, size=(k, ndim))
    return x, w, centres, cov, kvecs


def _whitening(cov):
    chol = np.linalg.cholesky(cov)
    return np.linalg.inv(chol)


@pytest.mark.parametrize("chunk_size", [None, 1, 64, 333, 10_000])
def test_kernel_sums_match_scipy(chunk_size):
    rng = np.random.default_rng(0)
    x, w, centres, cov, _ = _problem(rng)
    shift = x.mean(0)
    whit = _whitening(cov)
    with jax.enable_x64(True):
        got = gaussian_kernel_sums(
            jnp.asarray(x), jnp.asarray(w), jnp.asarray((centres - shift) @ whit.T),
            jnp.asarray(whit), jnp.asarray(shift), chunk_size=chunk_size,
        )
        got_unweighted = gaussian_kernel_sums(
            jnp.asarray(x), None, jnp.asarray((centres - shift) @ whit.T),
            jnp.asarray(whit), jnp.asarray(shift), chunk_size=chunk_size,
        )
    norm = np.sqrt(np.linalg.det(2 * np.pi * cov))
    pdfs = np.array([stats.multivariate_normal(c, cov).pdf(x) for c in centres])
    np.testing.assert_allclose(np.asarray(got), pdfs @ w * norm, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(got_unweighted), pdfs.sum(1) * norm, rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 7, 256])
def test_fourier_sums_match_numpy(chunk_size):
    rng = np.random.default_rng(1)
    x, w, _, _, kvecs = _problem(rng)
    with jax.enable_x64(True):
        re, im = fourier_sums(jnp.asarray(x), jnp.asarray(w), jnp.asarray(kvecs), jnp.asarray(x.mean(0)),
                              chunk_size=chunk_size)
    ecf = np.exp(1j * x @ kvecs.T).T @ w
    np.testing.assert_allclose(np.asarray(re) + 1j * np.asarray(im), ecf, rtol=1e-10)


def test_float32_sums_are_accurate():
    # The float32 path uses the polynomial sincos and a shifted origin.
    rng = np.random.default_rng(2)
    x, w, centres, cov, kvecs = _problem(rng, n=5000)
    x = x + 40.0  # far from the origin: phases are large
    shift = x.mean(0)
    whit = _whitening(cov)
    re, im = fourier_sums(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                          jnp.asarray(kvecs, jnp.float32), jnp.asarray(shift, jnp.float32))
    ecf = np.exp(1j * x @ kvecs.T).T @ w
    assert re.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(re) + 1j * np.asarray(im), ecf, atol=1e-4 * w.sum())
    got = gaussian_kernel_sums(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                               jnp.asarray((centres + 40.0 - shift) @ whit.T, jnp.float32),
                               jnp.asarray(whit, jnp.float32), jnp.asarray(shift, jnp.float32))
    norm = np.sqrt(np.linalg.det(2 * np.pi * cov))
    pdfs = np.array([stats.multivariate_normal(c + 40.0, cov).pdf(x) for c in centres])
    np.testing.assert_allclose(np.asarray(got), pdfs @ w * norm, rtol=1e-4)


def test_fast_sincos_float32():
    theta = np.concatenate([np.linspace(-50, 50, 200_001), np.linspace(-2e4, 2e4, 10_001)]).astype(np.float32)
    s, c = jax.jit(sincos)(jnp.asarray(theta))
    np.testing.assert_allclose(np.asarray(s), np.sin(theta.astype(np.float64)), atol=5e-6)
    np.testing.assert_allclose(np.asarray(c), np.cos(theta.astype(np.float64)), atol=5e-6)
    ds = jax.grad(lambda t: sincos(t)[0].sum())(jnp.asarray(theta[:1000]))
    np.testing.assert_allclose(np.asarray(ds), np.cos(theta[:1000].astype(np.float64)), atol=5e-6)


def test_sums_of_squares():
    rng = np.random.default_rng(3)
    x, w, centres, cov, kvecs = _problem(rng, n=300)
    shift = x.mean(0)
    whit = _whitening(cov)
    with jax.enable_x64(True):
        sums, squares = gaussian_kernel_sums_and_squares(
            jnp.asarray(x), jnp.asarray(w), jnp.asarray((centres - shift) @ whit.T),
            jnp.asarray(whit), jnp.asarray(shift), chunk_size=77)
        re, im, re2 = fourier_sums_and_squares(jnp.asarray(x), jnp.asarray(w), jnp.asarray(kvecs),
                                               jnp.asarray(shift), chunk_size=50)
    norm = np.sqrt(np.linalg.det(2 * np.pi * cov))
    wp = np.array([stats.multivariate_normal(c, cov).pdf(x) for c in centres]).T * w[:, None] * norm
    np.testing.assert_allclose(np.asarray(sums), wp.sum(0), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(squares), (wp**2).sum(0), rtol=1e-10)
    theta = x @ kvecs.T
    np.testing.assert_allclose(np.asarray(re), w @ np.cos(theta), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(re2), (w**2) @ np.cos(2 * theta), rtol=1e-9, atol=1e-9)


def _direct_gauss(x, w, centres, whitening, shift):
    u = (x - shift) @ whitening.T
    return w @ jnp.exp(-0.5 * jnp.sum((u[:, None] - centres[None]) ** 2, -1))


def _direct_fourier(x, w, kvecs, shift):
    theta = x @ kvecs.T
    return w @ jnp.cos(theta), w @ jnp.sin(theta)


@pytest.mark.parametrize("chunk_size", [None, 64])
def test_derivatives_match_direct_autodiff(chunk_size):
    """Reverse and forward mode, in every argument, equal AD of the dense formula."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x, w, centres, cov, kvecs = map(jnp.asarray, _problem(rng, n=1000, k=9))
        whit, shift = jnp.asarray(_whitening(np.asarray(cov))), jnp.asarray(rng.normal(size=3))
        vc = (centres - shift) @ whit.T
        fused = [
            (lambda *a: gaussian_kernel_sums(*a, chunk_size=chunk_size), _direct_gauss, (x, w, vc, whit, shift)),
            (lambda *a: jnp.stack(fourier_sums(*a, chunk_size=chunk_size)),
             lambda *a: jnp.stack(_direct_fourier(*a)), (x, w, kvecs, shift)),
        ]
        for fn, ref, args in fused:
            def loss(f, *a):
                return jnp.sum(jnp.sin(f(*a)))

            argnums = tuple(range(1, len(args) + 1))
            got = jax.grad(loss, argnums)(fn, *args)
            want = jax.grad(loss, argnums)(ref, *args)
            for g, r in zip(got, want):
                np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-11)
            tangents = tuple(jnp.full_like(a, 0.1) for a in args)
            np.testing.assert_allclose(jax.jvp(lambda *a: loss(fn, *a), args, tangents)[1],
                                       jax.jvp(lambda *a: loss(ref, *a), args, tangents)[1],
                                       rtol=1e-9, atol=1e-11)


def test_gradient_and_hessian_of_a_kdescent_loss_match_finite_differences():
    """A loss from KCalc, differentiated w.r.t. parameters that move, scale and weight the points."""
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        train = jnp.asarray(rng.normal(size=(2000, 2)) * [1.0, 0.5] + [1.0, -1.0])
        kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
            train, num_pretrain_kernels=100, num_pretrain_fourier_positions=100, seed=1))
        z = jnp.asarray(rng.normal(size=(3001, 2)))

        def loss(p, key=jax.random.key(7)):
            x = p[:2] + jnp.exp(p[2]) * z
            w = jax.nn.sigmoid(p[3] * z[:, 0])
            k1, k2 = jax.random.split(key)
            mk, tk = kcalc.compare_kde_counts(k1, x, w)
            mf, tf = kcalc.compare_fourier_counts(k2, x, w)
            return jnp.sum((mk / 3001 - tk / 2000) ** 2) + jnp.sum(jnp.abs(mf / 3001 - tf / 2000) ** 2)

        p = jnp.array([0.7, -0.8, -0.1, 0.4])
        value, grad_fn = jax.jit(loss), jax.jit(jax.grad(loss))
        grad = grad_fn(p)
        eps = 1e-6
        fd = np.array([(value(p + eps * e) - value(p - eps * e)) / (2 * eps) for e in np.eye(4)])
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-10)
        hess = jax.jit(jax.hessian(loss))(p)
        fd_h = np.array([(grad_fn(p + eps * e) - grad_fn(p - eps * e)) / (2 * eps) for e in np.eye(4)])
        np.testing.assert_allclose(np.asarray(hess), fd_h, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(np.asarray(jax.jit(jax.jacfwd(loss))(p)), np.asarray(grad), rtol=1e-10)


def test_backward_pass_memory_does_not_grow_with_points_times_kernels():
    n, ndim, k = 1_000_000, 3, 64

    def fused(p, z, centres):
        x = p[0] + p[1] * z
        zero, eye = jnp.zeros(ndim, jnp.float32), jnp.eye(ndim, dtype=jnp.float32)
        re, im = fourier_sums(x, None, centres, zero)
        return gaussian_kernel_sums(x, None, centres, eye, zero).sum() + re.sum() + im.sum()

    args = (jnp.ones(2, jnp.float32), jax.ShapeDtypeStruct((n, ndim), jnp.float32), jax.ShapeDtypeStruct((k, ndim), jnp.float32))
    temp = jax.jit(jax.value_and_grad(fused)).lower(*args).compile().memory_analysis().temp_size_in_bytes
    dense = n * k * 4
    assert temp < dense / 4, f"{temp / 1e6:.0f} MB of temporaries: an N x K array is being stored"


def test_empty_sample_gives_zero_counts():
    train = jnp.asarray(np.random.default_rng(6).normal(size=(500, 2)))
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(train, num_pretrain_kernels=50,
                                                                     num_pretrain_fourier_positions=50))
    model, truth = kcalc.compare_kde_counts(0, jnp.zeros((0, 2)))
    assert model.shape == truth.shape == (20,) and not np.any(np.asarray(model))
    model, _ = kcalc.compare_fourier_counts(0, jnp.zeros((0, 2)), jnp.zeros(0))
    assert model.shape == (20,) and not np.any(np.asarray(model))


# --- KCalc ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kcalc2d():
    rng = np.random.default_rng(8)
    train = jnp.asarray(rng.multivariate_normal([1.0, 2.0], [[1.0, 0.3], [0.3, 0.5]], size=4000), jnp.float32)
    return kdescent.KCalc(kdescent.KPretrainer.from_training_data(train, seed=3)), train


def test_kcalc_selects_without_replacement_and_reproducibly(kcalc2d):
    kcalc, _ = kcalc2d
    inds = np.asarray(kcalc.realize_kernel_inds(jax.random.key(3)))
    assert inds.shape == (20,) and len(set(inds.tolist())) == 20
    np.testing.assert_array_equal(inds, np.asarray(kcalc.realize_kernel_inds(3)))
    assert not np.array_equal(inds, np.asarray(kcalc.realize_kernel_inds(4)))
    finds = np.asarray(kcalc.realize_fourier_inds(3))
    assert finds.shape == (20,) and len(set(finds.tolist())) == 20


def test_kcalc_counts_match_direct_computation(kcalc2d):
    kcalc, train = kcalc2d
    pre = kcalc.pretrainer
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3000, 2)) + [1.0, 2.0]
    w = rng.uniform(size=3000)
    key = jax.random.key(11)
    model, truth, err = kcalc.compare_kde_counts(key, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                                 return_err=True)
    inds = np.asarray(kcalc.realize_kernel_inds(key))
    cov = np.asarray(pre.kernel_cov, np.float64)
    centres = np.asarray(pre.kernel_centers, np.float64)[inds]
    pdf_model = np.array([stats.multivariate_normal(c, cov).pdf(x) for c in centres])
    pdf_train = np.array([stats.multivariate_normal(c, cov).pdf(np.asarray(train, np.float64)) for c in centres])
    np.testing.assert_allclose(np.asarray(model), pdf_model @ w, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(truth), pdf_train.sum(1), rtol=2e-4)
    np.testing.assert_allclose(np.asarray(err), np.sqrt((pdf_train**2).sum(1)), rtol=2e-4)

    mf, tf, ef = kcalc.compare_fourier_counts(key, jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                              return_err=True)
    finds = np.asarray(kcalc.realize_fourier_inds(key))
    k = np.asarray(pre.fourier_positions, np.float64)[finds]
    tx = np.asarray(train, np.float64)
    np.testing.assert_allclose(np.asarray(mf), np.exp(1j * x @ k.T).T @ w, atol=1e-4 * w.sum())
    np.testing.assert_allclose(np.asarray(tf), np.exp(1j * tx @ k.T).sum(0), atol=1e-4 * len(tx))
    np.testing.assert_allclose(np.asarray(ef.real), np.sqrt((np.cos(tx @ k.T) ** 2).sum(0)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(ef.imag), np.sqrt((np.sin(tx @ k.T) ** 2).sum(0)), rtol=1e-4)


def test_kcalc_is_a_pytree_argument_of_jit(kcalc2d):
    kcalc, train = kcalc2d
    x = train[:1000] + 0.1

    @jax.jit
    def loss_arg(kc, x, key):
        return kc.reduced_chisq_loss(key, x, density=True)

    captured = jax.jit(lambda x, key: kcalc.reduced_chisq_loss(key, x, density=True))
    key = jax.random.key(0)
    np.testing.assert_allclose(loss_arg(kcalc, x, key), captured(x, key), rtol=1e-6)
    np.testing.assert_allclose(loss_arg(kcalc, x, key), kcalc.reduced_chisq_loss(key, x, density=True), rtol=1e-5)
    # Gradients w.r.t. a parameter flow through the jitted call.
    g = jax.jit(jax.grad(lambda s, kc: kc.reduced_chisq_loss(key, x * s, density=True)))(1.2, kcalc)
    assert np.isfinite(g) and g != 0


def test_reduced_chisq_loss(kcalc2d):
    kcalc, train = kcalc2d
    key = jax.random.key(5)
    # The training sample itself fits perfectly, in counts and as densities.
    assert float(kcalc.reduced_chisq_loss(key, train)) < 1e-6
    assert float(kcalc.reduced_chisq_loss(key, train[::2], density=True)) < 5.0
    # Half the sample has half the counts: bad as counts, fine as densities.
    assert float(kcalc.reduced_chisq_loss(key, train[::2])) > 100.0
    shifted = train + jnp.array([1.0, 0.0])
    assert float(kcalc.reduced_chisq_loss(key, shifted, density=True)) > 100.0
    # Same definition as assembled by hand.
    k1, k2 = jax.random.split(key)
    mk, tk, ek = kcalc.compare_kde_counts(k1, shifted, return_err=True)
    mf, tf, ef = kcalc.compare_fourier_counts(k2, shifted, return_err=True)
    resid = np.concatenate([(mk - tk) / ek, (mf.real - tf.real) / ef.real, (mf.imag - tf.imag) / ef.imag])
    np.testing.assert_allclose(float(kcalc.reduced_chisq_loss(key, shifted)), np.mean(resid**2), rtol=1e-5)


def test_kcalc_shape_check_fires_under_jit(kcalc2d):
    kcalc, _ = kcalc2d
    # The shape check also fires under jit.
    with pytest.raises(ValueError, match="x has 1 dimensions"):
        jax.jit(lambda x: kcalc.compare_kde_counts(0, x))(jnp.zeros((5, 1)))


# --- phases of any size -----------------------------------------------------------
# The float32 polynomial sine/cosine is valid for |theta| < ~1e5; beyond it the
# kernels must give the jnp.sin/jnp.cos answer, so that a loss stays finite and
# ordered however far a model sample wanders.

_THETA_SLOTS = 64  # one compiled shape for every hypothesis example


@st.composite
def _thetas(draw):
    """float32 phases with log-uniform magnitudes in [1e-3, 1e30], both signs."""
    count = draw(st.integers(1, _THETA_SLOTS))
    exps = draw(st.lists(st.floats(-3.0, 30.0), min_size=count, max_size=count))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=count, max_size=count))
    theta = (np.array(signs) * 10.0 ** np.array(exps)).astype(np.float32)
    return np.resize(theta, _THETA_SLOTS)


_jit_sincos = jax.jit(sincos)
_jit_sincos_grad = jax.jit(jax.grad(lambda t, a, b: jnp.sum(a * sincos(t)[0] + b * sincos(t)[1])))
_jit_sincos_jvp = jax.jit(lambda t, dt: jax.jvp(sincos, (t,), (dt,)))


@settings(max_examples=300, deadline=None)
@given(_thetas())
def test_sincos_matches_jnp_over_the_float32_range(theta):
    s, c = _jit_sincos(jnp.asarray(theta))
    s_ref, c_ref = jnp.sin(theta), jnp.cos(theta)
    np.testing.assert_allclose(np.asarray(s), np.asarray(s_ref), rtol=0, atol=3e-7)
    np.testing.assert_allclose(np.asarray(c), np.asarray(c_ref), rtol=0, atol=3e-7)
    # Gradients (through the custom_jvp), reverse and forward mode.
    a = np.linspace(-1.0, 2.0, theta.size, dtype=np.float32)
    b = np.linspace(1.5, -0.5, theta.size, dtype=np.float32)
    grad = _jit_sincos_grad(jnp.asarray(theta), a, b)
    np.testing.assert_allclose(np.asarray(grad), a * np.asarray(c_ref) - b * np.asarray(s_ref), rtol=0, atol=1e-6)
    _, (ds, dc) = _jit_sincos_jvp(jnp.asarray(theta), jnp.asarray(a))
    np.testing.assert_allclose(np.asarray(ds), a * np.asarray(c_ref), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dc), -a * np.asarray(s_ref), rtol=0, atol=1e-6)


_jit_fourier_grad = jax.jit(jax.value_and_grad(
    lambda p, x, w, k, s: jnp.sum(jnp.stack(fourier_sums(x + p, w, k, s)) * jnp.array([[1.0], [-0.5]])),
    argnums=(0, 2)))


@settings(max_examples=60, deadline=None)
@given(st.floats(-3.0, 30.0), st.sampled_from([-1.0, 1.0]), st.integers(0, 2**31 - 1))
def test_fourier_sums_match_the_same_float32_phases_at_any_distance(log_offset, sign, seed):
    """1-D, so that a float32 phase is one rounded product, reproducible in NumPy."""
    rng = np.random.default_rng(seed)
    offset = np.float32(sign * 10.0**log_offset)
    x = (offset + rng.normal(size=(300, 1)) * max(1.0, abs(offset) * 1e-6)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, size=300).astype(np.float32)
    k = rng.uniform(0.1, 2.0, size=(13, 1)).astype(np.float32)
    shift = np.array([0.25], np.float32)
    (value, (gp, gw)) = _jit_fourier_grad(jnp.float32(0.0), x, w, k, shift)
    # theta in float32 exactly as the kernel forms it: (x - s) * k, then the
    # rotation by exp(i k s) (exact here: k s is small).
    theta = ((x - shift) * k[:, 0]).astype(np.float32).astype(np.float64)  # (n, K)
    phase = (k[:, 0].astype(np.float64) * np.float64(shift[0]))
    ecf = (w.astype(np.float64) @ np.exp(1j * theta)) * np.exp(1j * phase)
    want = np.sum(ecf.real) - 0.5 * np.sum(ecf.imag)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(gw))) and np.isfinite(float(gp))
    np.testing.assert_allclose(float(value), want, rtol=0, atol=1e-5 * w.sum() * 13)
    # d/dw_n and d/dp of the same dense formula.
    dens = np.exp(1j * theta) * np.exp(1j * phase)  # (n, K)
    np.testing.assert_allclose(np.asarray(gw), dens.real.sum(1) - 0.5 * dens.imag.sum(1), rtol=0, atol=1e-4)
    dp = (w[:, None] * 1j * k[:, 0] * dens).sum(0)
    np.testing.assert_allclose(float(gp), np.sum(dp.real) - 0.5 * np.sum(dp.imag), rtol=0,
                               atol=1e-5 * np.abs(dp).sum())


@pytest.fixture(scope="module")
def far_problem():
    rng = np.random.default_rng(13)
    train = rng.multivariate_normal([1.0, 2.0, 3.0], np.diag([3.0, 5.0, 7.0]), size=100).astype(np.float32)
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
        train, num_eval_kernels=10, num_eval_fourier_positions=10))

    def kde_mse(p, key):
        model, truth = kcalc.compare_kde_counts(key, train * 0.999 + p)
        return jnp.mean((model - truth) ** 2)

    def chisq(p, key):
        return kcalc.reduced_chisq_loss(key, train * 0.999 + p)

    return kde_mse, chisq


NEAR, WORSE, FAR = [0.0, 0.0, 0.0], [0.9, -1.7, 2.4], [1e20, -1e20, 1e20]


@pytest.mark.parametrize("which", ["kde_mse", "chisq"])
def test_losses_stay_finite_and_ordered_far_from_the_data(far_problem, which):
    loss = dict(zip(["kde_mse", "chisq"], far_problem))[which]
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    for seed in range(4):
        key = jax.random.key(seed)
        (near, g_near), (worse, _), (far, g_far) = (
            value_and_grad(jnp.array(p, jnp.float32), key) for p in (NEAR, WORSE, FAR))
        assert float(far) > float(worse) > float(near) > 0, (which, seed, far, worse, near)
        assert np.all(np.isfinite(np.asarray(g_near))) and np.all(np.isfinite(np.asarray(g_far)))
        if which == "kde_mse":
            # No kernel sees the far sample: its gradient is exactly zero, not NaN.
            np.testing.assert_array_equal(np.asarray(g_far), 0.0)


@pytest.mark.parametrize("which", ["kde_mse", "chisq"])
def test_adam_recovers_the_shift(far_problem, which):
    loss = dict(zip(["kde_mse", "chisq"], far_problem))[which]
    params, losses = kdescent.adam(loss, jnp.array(WORSE), nsteps=100, learning_rate=0.5, progress=False)
    np.testing.assert_allclose(np.asarray(params[-1]), 0.0, atol=0.1)
    assert np.all(np.isfinite(np.asarray(losses)))


def test_ecf_of_data_far_from_the_origin_is_accurate():
    """Positions near 1e6 with spread 1: the phases are centred on the training
    mean and rotated back exactly, so the ECF matches a float64 evaluation of
    the same float32 numbers (a float32 k . mean alone would be off by 0.06 rad)."""
    rng = np.random.default_rng(14)
    train = (rng.normal(size=(4000, 3)) + [1e6, -2e6, 5e5]).astype(np.float32)
    model = (rng.normal(size=(3000, 3)) * 1.1 + [1e6 + 0.2, -2e6, 5e5]).astype(np.float32)
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
        train, num_pretrain_kernels=200, num_pretrain_fourier_positions=200, seed=2))
    key = jax.random.key(3)
    mf, tf = kcalc.compare_fourier_counts(key, model)
    kvecs = np.asarray(kcalc.pretrainer.fourier_positions, np.float64)[np.asarray(kcalc.realize_fourier_inds(key))]
    for got, pts in ((mf, model), (tf, train)):
        want = np.exp(1j * (pts.astype(np.float64) @ kvecs.T)).sum(0)
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-5 * len(pts))
    mk, tk = kcalc.compare_kde_counts(key, model)
    assert np.all(np.isfinite(np.asarray(mk))) and float(jnp.sum(mk)) > 0.1 * float(jnp.sum(tk))


def test_many_dimensions_do_not_blow_up_compiled_code():
    """In 12 dimensions the ECF's phase factor multiplies 37 complex numbers per
    Fourier position. Written as a chain of angle additions, a fused consumer
    (the pretrainer stacks its sums) evaluated 2**36 paths per position and
    never finished (30 s in 10 dimensions). A fresh process must pretrain and
    evaluate well inside the bound: 240 s, about 40x what it takes here."""
    import subprocess
    import sys

    code = """
import numpy as np, jax, jax.numpy as jnp
from diffopt import kdescent
from diffopt.kdescent._kernels import fourier_sums
rng = np.random.default_rng(0)
train = rng.normal(size=(500, 12)).astype(np.float32)
pre = kdescent.KPretrainer.from_training_data(train, num_eval_kernels=5, num_eval_fourier_positions=5)
x = jnp.asarray(train)
stacked = jax.jit(lambda x: jnp.stack(fourier_sums(x, None, pre.fourier_positions, pre.training_mean)))(x)
print(stacked.shape, bool(jnp.all(jnp.isfinite(stacked))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(2,", "1500)", "True"], out.stdout
