"""multigrad: exactness across ranks, fits and bad input (the seed quickstart runs in test_docs.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mpi4py import MPI

from conftest import TESTS, run_mpi
from diffopt import multigrad


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_exact_across_ranks(nranks):
    proc = run_mpi(TESTS / "mpi" / "multigrad_exact.py", nranks, str(nranks), "10" if nranks > 1 else "12")
    assert f"OK on {nranks} ranks" in proc.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [3, 4])
def test_group_on_subcomms(nranks):
    proc = run_mpi(TESTS / "mpi" / "multigrad_group.py", nranks, str(nranks))
    assert "group: OK" in proc.stdout


@pytest.mark.mpi
def test_fits_agree_between_1_and_3_ranks(tmp_path):
    for n in (1, 3):
        run_mpi(TESTS / "mpi" / "multigrad_fits.py", n, str(n), str(tmp_path / f"fits{n}.npz"))
    one, three = np.load(tmp_path / "fits1.npz"), np.load(tmp_path / "fits3.npz")
    assert sorted(one.files) == ["adam", "bfgs", "lbfgs", "user_scan"]
    # Float64, equal in exact arithmetic: only the order of the sums differs
    # (measured differences 4e-16 to 5e-13 of the values).
    for name in one.files:
        np.testing.assert_allclose(one[name], three[name], rtol=1e-11, atol=1e-14, err_msg=name)


class Quadratic(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        return jnp.stack([params[0], params[1] ** 2, params[0] * params[1]])

    def calc_loss_from_sumstats(self, sumstats):
        return jnp.sum((sumstats - self.aux_data) ** 2)


def quadratic():
    return Quadratic(aux_data=jnp.array([0.5, 0.25, 0.25]))


def test_adam_with_bounds_stops_near_bound():
    # The unconstrained optimum has params[0] = 0.5; the bound holds it below 0.3.
    hist, losses = quadratic().run_adam(jnp.array([0.0, 0.0]), nsteps=600, learning_rate=0.05,
                                        param_bounds=[(-1.0, 0.3), None], progress=False)
    assert hist.shape == (601, 2) and losses.shape == (601,)
    assert np.all(np.asarray(hist[:, 0]) < 0.3)
    assert 0.29 < float(hist[-1, 0]) < 0.3


@pytest.mark.parametrize("optimizer", [optax.adamw(0.05), optax.lbfgs()])
def test_any_optax_optimizer(optimizer):
    hist, _ = quadratic().run_adam(jnp.array([0.1, 0.1]), nsteps=300, optimizer=optimizer, progress=False)
    np.testing.assert_allclose(hist[-1], [0.5, 0.5], atol=2e-2)


def test_simple_grad_descent_and_lhs():
    result = quadratic().run_simple_grad_descent(jnp.array([0.1, 0.1]), nsteps=50, learning_rate=0.1,
                                                 progress=False)
    assert result.loss.shape == (50,) and result.params.shape == (50, 2)
    assert result.loss[-1] < result.loss[0]
    params, sumstats, losses = quadratic().run_lhs_param_scan(-1, 1, 2, 8, seed=0)
    assert params.shape == (8, 2) and sumstats.shape == (8, 3) and losses.shape == (8,)
    np.testing.assert_allclose(losses[3], quadratic().calc_loss_from_params(params[3]), rtol=1e-6)


def test_user_scan_training_loop():
    model, opt = quadratic(), optax.adam(0.05)

    @jax.jit
    def train(model, params):
        def step(carry, _):
            params, state = carry
            loss, grad = jax.value_and_grad(model.calc_loss_from_params)(params)
            updates, state = opt.update(grad, state)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=400)
        return params, losses

    params, losses = train(model, jnp.array([0.1, 0.1]))
    np.testing.assert_allclose(params, [0.5, 0.5], atol=1e-2)


def test_pytree_params():
    class Tree(multigrad.OnePointModel):
        def calc_partial_sumstats_from_params(self, params):
            return params["a"] * jnp.arange(3.0) + params["b"][0]

        def calc_loss_from_sumstats(self, sumstats):
            return jnp.sum(sumstats**2)

    loss, grad = Tree().calc_loss_and_grad_from_params({"a": 1.0, "b": (2.0,)})
    assert set(grad) == {"a", "b"} and isinstance(grad["b"], tuple)
    np.testing.assert_allclose(grad["a"], 2 * np.sum(np.arange(3.0) * (np.arange(3.0) + 2)))


def test_nan_loss_stops_fit_with_warning():
    class Blows(multigrad.OnePointModel):
        def calc_partial_sumstats_from_params(self, params):
            return params

        def calc_loss_from_sumstats(self, sumstats):
            return jnp.where(sumstats[0] > 0.5, jnp.nan, jnp.sum((sumstats - 2.0) ** 2))

    with pytest.warns(RuntimeWarning, match="non-finite at step"):
        hist, losses = Blows().run_adam(jnp.array([0.0, 0.0]), nsteps=200, learning_rate=0.1, progress=False)
    assert len(hist) < 200 and len(losses) == len(hist) and np.all(np.isfinite(losses)) and np.all(np.isfinite(np.asarray(hist)))
    assert float(hist[-1, 0]) <= 0.5


def test_sumstats_must_be_arrays():
    class Strings(multigrad.OnePointModel):
        def calc_partial_sumstats_from_params(self, params):
            return "not numbers"

        def calc_loss_from_sumstats(self, sumstats):
            return 0.0

    with pytest.raises(TypeError, match="sumstats"):
        Strings().calc_sumstats_from_params(jnp.zeros(2))


def test_reduce_sum_types():
    assert multigrad.reduce_sum(2) == 2 * MPI.COMM_WORLD.size
    assert isinstance(multigrad.reduce_sum(np.ones(2)), np.ndarray)
    assert isinstance(multigrad.reduce_sum(jnp.ones(2)), jax.Array)
