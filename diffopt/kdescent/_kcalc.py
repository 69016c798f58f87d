"""KCalc: stochastic comparison of a model sample with pretrained training statistics."""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Complex, Float

from .. import _comm
from .._keys import as_key
from . import _checks
from ._kernels import _matmul, fourier_sums, gaussian_kernel_sums
from ._pretrainer import KPretrainer

__all__ = ["KCalc"]


class KCalc(eqx.Module):
    """Compare a model sample with the training data at randomly drawn kernels.

    Each call draws ``num_eval_kernels`` of the pretrained kernels (or
    ``num_eval_fourier_positions`` Fourier positions) without replacement,
    using ``randkey``, and returns the model's statistics there next to the
    pretrained training ones. Use a new key each step for stochastic gradient
    descent, and the same key on every MPI rank.

    The model statistics are evaluated in one fused, blocked pass over the
    points (see :mod:`diffopt.kdescent._kernels`), differentiable (reverse and
    forward mode) with respect to the points and the weights. Memory is the
    points plus a few ``chunk x num_eval_kernels`` float32 arrays, forward and
    backward. The default chunk follows the platform the computation is
    compiled for: on CPU a 1 MB block (``2**18 // num_eval_kernels``
    points); on a GPU or TPU a block sized so that sixteen block-sized
    arrays fit in 1/8 of the device memory, which runs ``n_points x
    num_eval_kernels`` up to ``memory / 512`` (about ``1.2e8`` on an 80 GB
    card) as a single block (see :func:`diffopt.kdescent._kernels.block_policy`).

    KCalc is an ``equinox.Module``: pass it to jitted functions as an
    argument or capture it, as you like.

    Parameters
    ----------
    pretrainer : KPretrainer
        The training statistics to compare with.
    chunk_size : int, optional
        Model points per block of the fused pass, on every platform (default:
        from the platform, as above).
    """

    pretrainer: KPretrainer
    whitening: Float[Array, "d d"]
    whitened_centers: Float[Array, "kp d"]
    log_norm: Float[Array, ""]
    chunk_size: int | None = eqx.field(static=True, default=None)

    def __init__(self, pretrainer: KPretrainer, chunk_size: int | None = None):
        if not isinstance(pretrainer, KPretrainer):
            raise TypeError(
                f"pretrainer must be a KPretrainer (see KPretrainer.from_training_data), "
                f"got {type(pretrainer).__name__}"
            )
        self.pretrainer = pretrainer
        self.chunk_size = None if chunk_size is None else _checks.positive_int(chunk_size, "chunk_size")
        # Kernels share one covariance L L^T: whiten with W = L^-1 once, and
        # every kernel becomes a unit Gaussian.
        chol = jnp.linalg.cholesky(pretrainer.kernel_cov)
        ndim = pretrainer.ndim
        self.whitening = jax.scipy.linalg.solve_triangular(
            chol, jnp.eye(ndim, dtype=chol.dtype), lower=True
        )
        self.whitened_centers = _matmul(pretrainer.kernel_centers - pretrainer.training_mean, self.whitening.T)
        self.log_norm = -0.5 * ndim * math.log(2 * math.pi) - jnp.sum(jnp.log(jnp.diag(chol)))

    # --- sizes ------------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return self.pretrainer.ndim

    @property
    def num_eval_kernels(self) -> int:
        return self.pretrainer.num_eval_kernels

    @property
    def num_eval_fourier_positions(self) -> int:
        return self.pretrainer.num_eval_fourier_positions

    @property
    def num_pretrain_kernels(self) -> int:
        return self.pretrainer.num_pretrain_kernels

    @property
    def num_pretrain_fourier_positions(self) -> int:
        return self.pretrainer.num_pretrain_fourier_positions

    # --- random subsets ------------------------------------------------------------

    def realize_kernel_inds(self, randkey: Any) -> Array:
        """Indices of the ``num_eval_kernels`` pretrained kernels drawn with ``randkey``."""
        key = as_key(randkey, required=True)
        return jax.random.choice(key, self.num_pretrain_kernels, (self.num_eval_kernels,), replace=False)

    def realize_fourier_inds(self, randkey: Any) -> Array:
        """Indices of the ``num_eval_fourier_positions`` positions drawn with ``randkey``."""
        key = as_key(randkey, required=True)
        return jax.random.choice(
            key, self.num_pretrain_fourier_positions, (self.num_eval_fourier_positions,), replace=False
        )

    # --- comparisons -----------------------------------------------------------------

    def _model_sample(self, x, weights, method):
        x = _checks.points(x, f"{method}: x", self.ndim)
        dtype = jnp.result_type(x.dtype, self.whitening.dtype)
        x = x.astype(dtype)
        weights = _checks.weights(weights, x.shape[0], f"{method}: weights", dtype)
        return x, weights

    def compare_kde_counts(
        self,
        randkey: Any,
        x: Float[ArrayLike, "n d"],
        weights: Float[ArrayLike, " n"] | None = None,
        return_err: bool = False,
        comm: Any = None,
    ) -> tuple[Float[Array, " k"], ...]:
        """Kernel counts of the model sample and of the training data.

        Parameters
        ----------
        randkey : PRNG key or int
            Selects the kernels. Give every MPI rank the same key.
        x : array (n_points, ndim)
            Model sample (this rank's share of it when ``comm`` is given).
        weights : array (n_points,), optional
            Non-negative weight of each model point (default: all 1).
        return_err : bool (default False)
            Also return the uncertainties of the training counts.
        comm : mpi4py communicator, optional
            The model sample is split across the ranks of ``comm``: the model
            counts are summed over them (differentiably; wrap parameters in
            :func:`diffopt.replicate`, or use a ``multigrad`` model, to get
            full-data gradients on every rank).

        Returns
        -------
        model_counts : array (num_eval_kernels,)
            ``sum_n w_n N(x_n; c_k, kernel_cov)`` for each drawn kernel ``k``.
        truth_counts : array (num_eval_kernels,)
            The same for the training data. Counts grow with the number of
            points: divide each by its sum of weights to compare densities.
        truth_err : array (num_eval_kernels,)
            Only with ``return_err``: ``truth_counts / sqrt(ESS)``.
        """
        x, weights = self._model_sample(x, weights, "compare_kde_counts")
        inds = self.realize_kernel_inds(randkey)
        sums = gaussian_kernel_sums(
            x,
            weights,
            self.whitened_centers[inds].astype(x.dtype),
            self.whitening.astype(x.dtype),
            self.pretrainer.training_mean.astype(x.dtype),
            chunk_size=self.chunk_size,
        )
        model = jnp.exp(self.log_norm).astype(x.dtype) * sums
        if comm is not None:
            model = _comm.sum_over_ranks(model, comm, name="model kernel counts")
        truth = self.pretrainer.kde_counts[inds]
        if return_err:
            return model, truth, self.pretrainer.kde_err[inds]
        return model, truth

    def compare_fourier_counts(
        self,
        randkey: Any,
        x: Float[ArrayLike, "n d"],
        weights: Float[ArrayLike, " n"] | None = None,
        return_err: bool = False,
        comm: Any = None,
    ) -> tuple[Complex[Array, " k"], ...]:
        """Empirical characteristic function values of the model and the training data.

        Parameters are as for :meth:`compare_kde_counts`; ``randkey`` selects
        ``num_eval_fourier_positions`` wave vectors ``k``.

        Returns
        -------
        model_ecf : complex array (num_eval_fourier_positions,)
            ``sum_n w_n exp(i k . x_n)`` (unnormalised, like the counts).
        truth_ecf : complex array (num_eval_fourier_positions,)
            The same for the training data.
        truth_err : complex array (num_eval_fourier_positions,)
            Only with ``return_err``: uncertainty of the real part as the
            real part, of the imaginary part as the imaginary part.
        """
        x, weights = self._model_sample(x, weights, "compare_fourier_counts")
        inds = self.realize_fourier_inds(randkey)
        re, im = fourier_sums(
            x,
            weights,
            self.pretrainer.fourier_positions[inds].astype(x.dtype),
            self.pretrainer.training_mean.astype(x.dtype),
            chunk_size=self.chunk_size,
        )
        if comm is not None:
            re, im = _comm.sum_over_ranks((re, im), comm, name="model ECF values")
        model = jax.lax.complex(re, im)
        truth = self.pretrainer.fourier_counts[inds]
        if return_err:
            return model, truth, self.pretrainer.fourier_err[inds]
        return model, truth

    def reduced_chisq_loss(
        self,
        randkey: Any,
        x: Float[ArrayLike, "n d"],
        weights: Float[ArrayLike, " n"] | None = None,
        density: bool = False,
        comm: Any = None,
    ) -> Float[Array, ""]:
        """Mean squared residual, in units of the training uncertainties, of both statistics.

        ``mean(((model - truth) / truth_err)**2)`` over the drawn kernel
        counts and the real and imaginary parts of the drawn ECF values
        (``num_eval_kernels + 2 * num_eval_fourier_positions`` terms).

        Parameters
        ----------
        randkey : PRNG key or int
            Split in two: kernels and Fourier positions.
        x, weights, comm :
            As for :meth:`compare_kde_counts`.
        density : bool (default False)
            False compares raw counts, which assumes the model sample has the
            same total weight as the training data. True divides the model
            statistics by the model's total weight and the training ones (and
            their errors) by the training total, comparing normalised
            densities and ECFs whatever the sample sizes.

        Notes
        -----
        Uncertainties are floored at ``1e-6`` times the largest one drawn, so
        a kernel far from every training point cannot divide by zero.
        """
        key_kde, key_fourier = jax.random.split(as_key(randkey))
        mk, tk, ek = self.compare_kde_counts(key_kde, x, weights, return_err=True, comm=comm)
        mf, tf, ef = self.compare_fourier_counts(key_fourier, x, weights, return_err=True, comm=comm)
        model = jnp.concatenate([mk, mf.real, mf.imag])
        truth = jnp.concatenate([tk, tf.real, tf.imag]).astype(model.dtype)
        err = jnp.concatenate([ek, ef.real, ef.imag]).astype(model.dtype)
        if density:
            x, weights = self._model_sample(x, weights, "reduced_chisq_loss")
            total = jnp.asarray(x.shape[0], x.dtype) if weights is None else jnp.sum(weights)
            if comm is not None:
                total = _comm.sum_over_ranks(total, comm, name="model total weight")
            train_total = self.pretrainer.training_sum_of_weights.astype(model.dtype)
            model = model / total
            truth = truth / train_total
            err = err / train_total
        err = jnp.maximum(err, 1e-6 * jnp.max(err))
        return jnp.mean(((model - truth) / err) ** 2)
