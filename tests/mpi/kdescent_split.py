"""kdescent on several ranks: a pretrainer spread over ranks, and a model sample split across them.

Usage: mpiexec -n N python kdescent_split.py N [--hessian]

Checks, on every rank (float64):

1. ``KPretrainer.from_training_data(..., comm=comm)`` gives every rank the
   same pretrainer, bit-identical to the single-process one for the same
   seed.
2. A kdescent loss whose kernel counts and ECF values are sums over a model
   sample split across the ranks (unevenly; one rank may hold no points),
   with identical keys on all ranks, has the same value and gradient (and,
   with ``--hessian``, Hessian) as one process holding the whole sample:
   a. with ``compare_*(..., comm=comm)`` and ``_comm.replicate``;
   b. as the partial sumstats of a ``multigrad.OnePointModel``.
"""

import hashlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffopt import _comm, kdescent, multigrad  # noqa: E402

LEAVES = ("kernel_centers", "kernel_cov", "kde_counts", "kde_err", "fourier_positions",
          "fourier_counts", "fourier_err", "training_mean", "training_sum_of_weights")


def digest(pretrainer):
    h = hashlib.sha256()
    for name in LEAVES:
        h.update(np.ascontiguousarray(np.asarray(getattr(pretrainer, name))).tobytes())
    return h.hexdigest()


class KdescentModel(multigrad.OnePointModel):
    """Kernel counts, ECF values and total weight of this rank's points as partial sumstats."""

    def calc_partial_sumstats_from_params(self, params, randkey):
        kcalc, z = self.aux_data["kcalc"], self.aux_data["z"]
        x = params[:2] + jnp.exp(params[2:4]) * z
        w = jax.nn.sigmoid(params[4] * z[:, 1])
        k1, k2 = jax.random.split(randkey)
        mk, _ = kcalc.compare_kde_counts(k1, x, w)
        mf, _ = kcalc.compare_fourier_counts(k2, x, w)
        return jnp.concatenate([mk, mf.real, mf.imag, jnp.sum(w)[None]])

    def calc_loss_from_sumstats(self, sumstats, randkey):
        kcalc = self.aux_data["kcalc"]
        k1, k2 = jax.random.split(randkey)
        nk, nf = kcalc.num_eval_kernels, kcalc.num_eval_fourier_positions
        mk, re, im, total = sumstats[:nk], sumstats[nk:nk + nf], sumstats[nk + nf:-1], sumstats[-1]
        tk = kcalc.pretrainer.kde_counts[kcalc.realize_kernel_inds(k1)]
        tf = kcalc.pretrainer.fourier_counts[kcalc.realize_fourier_inds(k2)]
        train_total = kcalc.pretrainer.training_sum_of_weights
        return (jnp.sum((mk / total - tk / train_total) ** 2)
                + jnp.sum((re / total - tf.real / train_total) ** 2 + (im / total - tf.imag / train_total) ** 2))


def model_reference_loss(params, z, kcalc, key):
    """KdescentModel's loss, in one process, through KCalc's own comparisons."""
    x = params[:2] + jnp.exp(params[2:4]) * z
    w = jax.nn.sigmoid(params[4] * z[:, 1])
    k1, k2 = jax.random.split(key)
    mk, tk = kcalc.compare_kde_counts(k1, x, w)
    mf, tf = kcalc.compare_fourier_counts(k2, x, w)
    total, train_total = jnp.sum(w), kcalc.pretrainer.training_sum_of_weights
    return jnp.sum((mk / total - tk / train_total) ** 2) + jnp.sum(jnp.abs(mf / total - tf / train_total) ** 2)


def split_bounds(n, nranks, rank):
    # Deliberately uneven: with 3 ranks the middle one holds nothing.
    cuts = {1: [0, n], 2: [0, n // 3, n], 3: [0, 2 * n // 5, 2 * n // 5, n]}[nranks]
    return cuts[rank], cuts[rank + 1]


def main(check_hessian):
    comm = _comm.default_comm()
    assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
    rank, nranks = comm.rank, comm.size
    rng = np.random.default_rng(0)
    train = rng.normal(size=(1500, 2)) * [1.0, 0.6] + [0.5, -1.0]
    train_w = rng.uniform(0.5, 1.5, size=1500)

    # 1. Pretraining spread over ranks (small blocks so every rank gets work).
    settings = dict(num_pretrain_kernels=700, num_pretrain_fourier_positions=500, chunk_size=64,
                    inverse_density_weight_power=0.5, num_idw_draws=2000, seed=5)
    shared = kdescent.KPretrainer.from_training_data(train, train_w, comm=comm, **settings)
    # The single-process reference is computed once, on rank 0 (CPU is scarce).
    alone = None
    if rank == 0:
        alone = digest(kdescent.KPretrainer.from_training_data(train, train_w, **settings))
    alone = _comm.bcast(alone, comm=comm)
    digests = _comm.allgather(digest(shared), comm=comm)
    assert all(d == alone for d in digests), (alone, digests)
    assert shared.num_pretrain_kernels == 700 and shared.num_pretrain_fourier_positions == 500
    kcalc = kdescent.KCalc(shared)

    # 2. A loss over a model sample split across ranks.
    n = 2001
    z = rng.normal(size=(n, 2))
    lo, hi = split_bounds(n, nranks, rank)
    z_local = jnp.asarray(z[lo:hi])

    def loss(params, z, comm=None):
        if comm is not None:
            params = _comm.replicate(params, comm)
        x = params[:2] + jnp.exp(params[2:4]) * z
        w = jax.nn.sigmoid(params[4] * z[:, 1])
        key = jax.random.key(3)  # identical on every rank
        k1, k2, k3 = jax.random.split(key, 3)
        mk, tk = kcalc.compare_kde_counts(k1, x, w, comm=comm)
        mf, tf = kcalc.compare_fourier_counts(k2, x, w, comm=comm)
        chisq = kcalc.reduced_chisq_loss(k3, x, w, density=True, comm=comm)
        return (jnp.sum((mk / n - tk / 1500) ** 2) + jnp.sum(jnp.abs(mf / n - tf / 1500) ** 2)
                + 1e-3 * chisq)

    params = jnp.array([0.3, -0.7, -0.2, -0.4, 0.6])
    full = None
    if rank == 0:
        full_value, full_grad = jax.jit(jax.value_and_grad(loss))(params, jnp.asarray(z))
        full_hess = jax.jit(jax.hessian(loss))(params, jnp.asarray(z)) if check_hessian else 0.0
        full = tuple(np.asarray(a) for a in (full_value, full_grad, full_hess))
    full_value, full_grad, full_hess = _comm.bcast(full, comm=comm)

    split = jax.jit(jax.value_and_grad(loss), static_argnums=2)
    value, grad = split(params, z_local, comm)
    np.testing.assert_allclose(value, full_value, rtol=1e-12)
    np.testing.assert_allclose(grad, full_grad, rtol=1e-10, atol=1e-14)
    if check_hessian:
        hess = jax.jit(jax.hessian(loss), static_argnums=2)(params, z_local, comm)
        np.testing.assert_allclose(hess, full_hess, rtol=1e-9, atol=1e-12 * np.abs(full_hess).max())

    # b. The same idea through multigrad: kernel counts as partial sumstats.
    key = jax.random.key(9)
    ref = None
    if rank == 0:
        ref = tuple(np.asarray(a) for a in jax.jit(jax.value_and_grad(model_reference_loss))(
            params, jnp.asarray(z), kcalc, key))
    ref_value, ref_grad = _comm.bcast(ref, comm=comm)
    model = KdescentModel(aux_data={"kcalc": kcalc, "z": z_local}, comm=comm)
    m_value, m_grad = model.calc_loss_and_grad_from_params(params, randkey=key)
    np.testing.assert_allclose(m_value, ref_value, rtol=1e-12)
    np.testing.assert_allclose(m_grad, ref_grad, rtol=1e-10, atol=1e-14)

    # Identical on every rank.
    everyone = _comm.allgather((float(value), np.asarray(grad).tolist()), comm=comm)
    assert all(e == everyone[0] for e in everyone), everyone
    if rank == 0:
        print(f"kdescent split over {nranks} rank(s): OK (loss {float(value):.6g})")


if __name__ == "__main__":
    main(check_hessian="--hessian" in sys.argv[2:])
