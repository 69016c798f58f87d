"""KPretrainer: kernel shapes, pretrained statistics, persistence and input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffopt import kdescent
from diffopt.kdescent._pretrainer import bandwidth

SMALL = dict(num_pretrain_kernels=120, num_pretrain_fourier_positions=90)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal([1.0, -2.0, 5.0], [[1.0, 0.4, 0.0], [0.4, 0.5, 0.1], [0.0, 0.1, 2.0]], size=3000)
    w = rng.uniform(0.2, 1.5, size=3000)
    return x, w


@pytest.fixture(scope="module")
def pretrainer(data):
    x, w = data
    return kdescent.KPretrainer.from_training_data(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                                    seed=4, **SMALL)


def _fields(p):
    leaves = {k: np.asarray(getattr(p, k)) for k in (
        "kernel_centers", "kernel_cov", "kde_counts", "kde_err", "fourier_positions", "fourier_counts",
        "fourier_err", "training_mean", "training_sum_of_weights")}
    static = {k: getattr(p, k) for k in (
        "num_eval_kernels", "num_eval_fourier_positions", "bandwidth_factor", "fourier_range_factor",
        "covariant_kernels", "inverse_density_weight_power", "seed")}
    return leaves, static


def assert_same_pretrainer(a, b):
    la, sa = _fields(a)
    lb, sb = _fields(b)
    assert sa == sb
    for k in la:
        assert la[k].dtype == lb[k].dtype, k
        np.testing.assert_array_equal(la[k], lb[k], err_msg=k)


def test_defaults_and_sizes():
    x = np.random.default_rng(1).normal(size=(500, 3))
    p = kdescent.KPretrainer.from_training_data(x)
    assert p.num_eval_kernels == p.num_eval_fourier_positions == 30
    assert p.kernel_centers.shape == (9000, 3) and p.kde_counts.shape == (9000,)
    assert p.fourier_positions.shape == (9000, 3) and p.fourier_counts.shape == (9000,)
    assert p.num_pretrain_kernels == p.num_pretrain_fourier_positions == 9000
    assert jnp.iscomplexobj(p.fourier_counts) and jnp.iscomplexobj(p.fourier_err)
    p = kdescent.KPretrainer.from_training_data(x[:, 0], num_eval_kernels=4, num_eval_fourier_positions=5)
    assert p.ndim == 1 and p.num_pretrain_kernels == 1200 and p.num_pretrain_fourier_positions == 1500


def test_is_an_equinox_module_with_array_leaves(pretrainer):
    leaves = jax.tree_util.tree_leaves(pretrainer)
    assert len(leaves) == 9 and all(isinstance(a, jax.Array) for a in leaves)
    # Static settings are part of the tree structure, not leaves.
    assert "30, 30, 1.0, 1.0, False, 0.0, 4" in str(jax.tree_util.tree_structure(pretrainer))


def test_kernel_covariance_and_fourier_range(data, pretrainer):
    x, w = data
    cov = np.cov(x, rowvar=False, aweights=w)
    bw = 30 ** (-1 / 7)
    assert bandwidth(30, 3, 1.0) == pytest.approx(bw)
    np.testing.assert_allclose(np.asarray(pretrainer.kernel_cov), np.diag(np.diag(cov)) * bw**2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(pretrainer.training_mean), np.average(x, axis=0, weights=w), rtol=1e-5)
    assert float(pretrainer.training_sum_of_weights) == pytest.approx(w.sum(), rel=1e-6)
    k = np.asarray(pretrainer.fourier_positions)
    kmax = 1.0 / np.sqrt(np.diag(cov))
    assert np.all(k >= 0) and np.all(k < kmax * (1 + 1e-6))
    assert np.all(k.max(0) > 0.8 * kmax)  # uniform over the box

    covariant = kdescent.KPretrainer.from_training_data(x, w, covariant_kernels=True, bandwidth_factor=0.5,
                                                         fourier_range_factor=3.0, **SMALL)
    bw = 0.5 * 30 ** (-1 / 7)
    np.testing.assert_allclose(np.asarray(covariant.kernel_cov), cov * bw**2, rtol=1e-5)
    assert np.all(np.asarray(covariant.fourier_positions) < 3.0 * kmax * (1 + 1e-6))


def test_pretrained_counts_match_direct_computation(data):
    x, w = data
    with jax.enable_x64(True):
        p = kdescent.KPretrainer.from_training_data(jnp.asarray(x), jnp.asarray(w), covariant_kernels=True,
                                                     chunk_size=50, **SMALL)
    assert p.kde_counts.dtype == jnp.float64
    cov = np.asarray(p.kernel_cov)
    wp = np.array([stats.multivariate_normal(c, cov).pdf(x) for c in np.asarray(p.kernel_centers)]) * w
    np.testing.assert_allclose(np.asarray(p.kde_counts), wp.sum(1), rtol=1e-10)
    # count / sqrt(ESS) with ESS = (sum w p)^2 / sum (w p)^2
    ess = wp.sum(1) ** 2 / (wp**2).sum(1)
    np.testing.assert_allclose(np.asarray(p.kde_err), wp.sum(1) / np.sqrt(ess), rtol=1e-10)
    theta = x @ np.asarray(p.fourier_positions).T
    np.testing.assert_allclose(np.asarray(p.fourier_counts), np.exp(1j * theta).T @ w, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.asarray(p.fourier_err.real), np.sqrt(((w[:, None] * np.cos(theta)) ** 2).sum(0)),
                               rtol=1e-9)
    np.testing.assert_allclose(np.asarray(p.fourier_err.imag), np.sqrt(((w[:, None] * np.sin(theta)) ** 2).sum(0)),
                               rtol=1e-9)


def test_kernel_centres_follow_the_data_and_inverse_density_weighting_spreads_them(data):
    x, _ = data
    x = x[:1000]
    plain = kdescent.KPretrainer.from_training_data(x, num_pretrain_kernels=2000, num_pretrain_fourier_positions=30)
    idw = kdescent.KPretrainer.from_training_data(x, num_pretrain_kernels=2000, num_pretrain_fourier_positions=30,
                                                  inverse_density_weight_power=1.0, num_idw_draws=10_000)
    # Centres of the KDE draws have the data's mean and a slightly larger spread.
    c = np.asarray(plain.kernel_centers)
    np.testing.assert_allclose(c.mean(0), x.mean(0), atol=0.15)
    bw2 = np.diag(np.asarray(plain.kernel_cov))
    np.testing.assert_allclose(c.var(0), x.var(0) + bw2, rtol=0.15)
    # Importance resampling moves kernels to where the training counts are low.
    assert np.median(np.asarray(idw.kde_counts)) < 0.5 * np.median(np.asarray(plain.kde_counts))
    assert np.asarray(idw.kernel_centers).var(0).sum() > 1.5 * c.var(0).sum()


def test_same_seed_same_pretrainer(data):
    x, _ = data
    a = kdescent.KPretrainer.from_training_data(x[:500], seed=7, **SMALL)
    b = kdescent.KPretrainer.from_training_data(x[:500], seed=7, chunk_size=32, **SMALL)
    np.testing.assert_array_equal(np.asarray(a.kernel_centers), np.asarray(b.kernel_centers))
    np.testing.assert_allclose(np.asarray(a.kde_counts), np.asarray(b.kde_counts), rtol=1e-6)
    c = kdescent.KPretrainer.from_training_data(x[:500], seed=8, **SMALL)
    assert not np.array_equal(np.asarray(a.kernel_centers), np.asarray(c.kernel_centers))


# --- save / load -------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path, pretrainer):
    path = tmp_path / "pre.npz"
    pretrainer.save(path)
    loaded = kdescent.KPretrainer.load(path)
    assert_same_pretrainer(pretrainer, loaded)
    # As with np.savez, a path without the suffix gets one; load finds it.
    pretrainer.save(str(tmp_path / "noext"))
    assert_same_pretrainer(pretrainer, kdescent.KPretrainer.load(str(tmp_path / "noext")))
    with np.load(path, allow_pickle=False) as f:
        assert str(f["__format__"]) == "diffopt.kdescent.KPretrainer" and int(f["__version__"]) == 1
    # KCalc built from the loaded pretrainer gives the same answers.
    x = jnp.asarray(np.random.default_rng(2).normal(size=(100, 3)), jnp.float32)
    a = kdescent.KCalc(pretrainer).compare_kde_counts(3, x)
    b = kdescent.KCalc(loaded).compare_kde_counts(3, x)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))


def _rewrite(src, dst, drop=(), add=None, replace=None):
    with np.load(src, allow_pickle=False) as f:
        fields = {k: f[k] for k in f.files if k not in drop}
    fields.update(add or {})
    fields.update(replace or {})
    np.savez(dst, **fields)
    return dst


def test_load_rejects_files_that_are_not_pretrainers(tmp_path, pretrainer):
    good = tmp_path / "good.npz"
    pretrainer.save(good)
    cases = {
        "missing field": (_rewrite(good, tmp_path / "a.npz", drop=["kde_err"]), r"missing field\(s\) \['kde_err'\]"),
        "extra field": (_rewrite(good, tmp_path / "b.npz", add={"bonus": np.ones(3)}), r"unexpected field\(s\) \['bonus'\]"),
        "wrong shape": (_rewrite(good, tmp_path / "c.npz", replace={"kde_counts": np.ones(7, np.float32)}),
                        r"kde_counts has shape \(7,\), expected \(120,\)"),
        "wrong dimension": (_rewrite(good, tmp_path / "d.npz", replace={"kernel_cov": np.eye(2, dtype=np.float32)}),
                            r"kernel_cov has shape \(2, 2\), expected \(3, 3\)"),
        "not complex": (_rewrite(good, tmp_path / "e.npz",
                                 replace={"fourier_counts": np.ones(90, np.float32)}), "expected a complex array"),
        "bad static": (_rewrite(good, tmp_path / "f.npz", replace={"num_eval_kernels": np.asarray(500)}),
                       "num_eval_kernels=500 must be between 1 and 120"),
        "version": (_rewrite(good, tmp_path / "g.npz", replace={"__version__": np.asarray(99)}), "version 99"),
        "no marker": (_rewrite(good, tmp_path / "h.npz", drop=["__format__"]), "format marker"),
    }
    np.savez(tmp_path / "random.npz", a=np.arange(3), b=np.ones((2, 2)))
    cases["random npz"] = (tmp_path / "random.npz", "format marker")
    np.save(tmp_path / "array.npy", np.arange(3))
    cases["npy"] = (tmp_path / "array.npy", "not an .npz archive")
    (tmp_path / "text.npz").write_text("hello, I am not a zip file")
    cases["text"] = (tmp_path / "text.npz", "not a KPretrainer file")
    np.savez(tmp_path / "pickled.npz", a=np.array([{"x": 1}], dtype=object))
    cases["pickle"] = (tmp_path / "pickled.npz", "not a KPretrainer file")
    for name, (path, match) in cases.items():
        with pytest.raises(ValueError, match=match):
            kdescent.KPretrainer.load(path)
    with pytest.raises(FileNotFoundError):
        kdescent.KPretrainer.load(tmp_path / "nothing_here.npz")


