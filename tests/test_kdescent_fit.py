"""kdescent.adam and kdescent.bfgs (thin wrappers over diffopt.optim)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import OptimizeResult

from diffopt import kdescent


@pytest.fixture(scope="module")
def problem():
    """Recover the mean and log-width of a 2-D Gaussian sample."""
    truth = jnp.array([0.5, -0.3, 0.2])
    z_train = jax.random.normal(jax.random.key(0), (4000, 2))
    train = truth[:2] + jnp.exp(truth[2]) * z_train
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
        train, num_pretrain_kernels=400, num_pretrain_fourier_positions=400))
    z = jax.random.normal(jax.random.key(1), (2000, 2))

    def lossfunc(params, randkey, scale=1.0):
        x = params[:2] + jnp.exp(params[2]) * z
        return scale * kcalc.reduced_chisq_loss(randkey, x, density=True)

    return truth, lossfunc


def test_adam_fits_within_bounds(problem):
    truth, lossfunc = problem
    guess = jnp.array([0.0, 0.0, 0.0])
    bounds = [None, (-1.0, 1.0), (-0.5, 0.5)]
    params, losses = kdescent.adam(lossfunc, guess, nsteps=150, param_bounds=bounds, learning_rate=0.05,
                                   randkey=3, progress=False)
    assert params.shape == (151, 3) and losses.shape == (151,)
    np.testing.assert_array_equal(np.asarray(params[0]), np.asarray(guess))
    np.testing.assert_allclose(np.asarray(params[-1]), np.asarray(truth), atol=0.1)
    assert np.all(np.asarray(params[:, 1]) > -1) and np.all(np.asarray(params[:, 2]) < 0.5)
    assert np.mean(np.asarray(losses[-10:])) < 0.1 * np.mean(np.asarray(losses[:10]))
    # Same key, same fit; thinning keeps the last row.
    again, _ = kdescent.adam(lossfunc, guess, nsteps=150, param_bounds=bounds, learning_rate=0.05,
                             randkey=3, progress=False, thin=7)
    np.testing.assert_allclose(np.asarray(again), np.asarray(params[np.r_[0:151:7, 150]]), rtol=1e-6)


def test_adam_options(problem):
    _, lossfunc = problem
    guess = jnp.array([0.1, 0.1, 0.0])
    seen = []

    def keyless(params, scale):
        seen.append(scale)
        return lossfunc(params, jax.random.key(0), scale=scale)

    # randkey=None: the loss is called without a key; extra kwargs are passed on.
    params, losses = kdescent.adam(keyless, guess, nsteps=5, randkey=None, progress=False, scale=2.0)
    assert seen and all(s == 2.0 for s in seen)
    assert params.shape == (6, 3)
    # Any optax optimiser; const_randkey passes one key to every step.
    params, _ = kdescent.adam(lossfunc, guess, nsteps=4, optimizer=optax.sgd(1e-3), const_randkey=True,
                              progress=False)
    assert params.shape == (5, 3)


def test_bfgs(problem):
    truth, lossfunc = problem
    params, losses, result = kdescent.bfgs(lossfunc, jnp.array([0.2, 0.0, 0.0]), maxsteps=40,
                                           param_bounds=[None, None, (-1.0, 1.0)], randkey=5, progress=False)
    assert isinstance(result, OptimizeResult)
    assert params.shape[1:] == (3,) and len(params) == len(losses)
    assert float(losses[-1]) <= float(losses[0])
    # A fixed key means fixed kernels: close to, not exactly at, the truth.
    np.testing.assert_allclose(np.asarray(params[-1]), np.asarray(truth), atol=0.15)
