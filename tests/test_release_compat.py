"""diffopt 2.0 users' scripts run unchanged (issue 13).

Each test is written the way a 2.0 script uses the API: ``NamedTuple``
parameters, ``run_adam`` unpacked as ``(params, losses)``, ``gd_params[-1]``
as the final parameter vector, small pretrainers, samples far from the data,
and the swarm's results dictionary. MPI cases run real scripts under
``mpiexec`` (tests/mpi/release_compat.py, nonfinite_guess.py, primitives.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from mpi4py import MPI

from conftest import TESTS, run_mpi
from diffopt import kdescent, multigrad, multiswarm, optim


class ParamTuple(NamedTuple):
    a: float = 0.5
    b: float = 0.25


@dataclass
class Quadratic(multigrad.OnePointModel):
    """A 2.0-style model: a dataclass whose ``aux_data`` has no default."""

    aux_data: dict
    loss_func_has_aux: bool = False

    def calc_partial_sumstats_from_params(self, params):
        p = params if isinstance(params, jax.Array) else jnp.stack(jax.tree_util.tree_leaves(params))
        return jnp.stack([p[0], p[1] ** 2, p[0] * p[1]]) * self.aux_data["scale"]

    def calc_loss_from_sumstats(self, sumstats, sumstats_aux=None):
        return jnp.sum((sumstats - self.aux_data["target"]) ** 2)


def model():
    return Quadratic(aux_data={"scale": jnp.float32(1.0), "target": jnp.array([0.5, 0.25, 0.25])})


# --- 1. run_adam returns (params, losses) -----------------------------------------------------


def test_run_adam_returns_params_and_losses():
    adam_params, adam_losses = model().run_adam(guess=ParamTuple(0.1, 0.1), nsteps=2, progress=False)
    assert adam_params.shape == (3, 2) and adam_losses.shape == (3,)
    np.testing.assert_array_equal(adam_params[0], np.float32([0.1, 0.1]))
    np.testing.assert_allclose(adam_losses[0], model().calc_loss_from_params(jnp.array([0.1, 0.1])))
    group_params, group_losses = multigrad.OnePointGroup(model()).run_adam(
        guess=ParamTuple(0.1, 0.1), nsteps=2, progress=False)
    np.testing.assert_allclose(group_params, adam_params, rtol=1e-6)
    np.testing.assert_allclose(group_losses, adam_losses, rtol=1e-6)


def test_thin_zero_returns_only_the_final_parameters():
    m = model()
    params, losses = m.run_adam(ParamTuple(0.1, 0.1), nsteps=5, thin=0, progress=False)
    full, full_losses = m.run_adam(ParamTuple(0.1, 0.1), nsteps=5, progress=False)
    assert params.shape == (2,) and losses.shape == ()
    np.testing.assert_array_equal(params, full[-1])
    np.testing.assert_array_equal(losses, full_losses[-1])
    gd = m.run_simple_grad_descent(ParamTuple(0.1, 0.1), nsteps=5, thin=0, progress=False)
    assert gd.params.shape == (2,) and gd.loss.shape == ()
    params, losses = kdescent.adam(scalar_loss, [0.1, 0.1], nsteps=5, thin=0, randkey=None, progress=False)
    assert params.shape == (2,) and losses.shape == ()
    params, losses, _ = kdescent.bfgs(scalar_loss, [0.1, 0.1], maxsteps=5, thin=0, progress=False)
    assert params.shape == (2,) and losses.shape == ()


# --- 2. array-like guesses are arrays; other pytrees stay pytrees ---------------------------------

ARRAY_LIKE = {
    "NamedTuple": ParamTuple(0.1, 0.2),
    "tuple": (0.1, 0.2),
    "list": [0.1, 0.2],
    "list of ints": [1, 0],
    "numpy": np.array([0.1, 0.2]),
    "jax": jnp.array([0.1, 0.2]),
    "tuple of 0-d arrays": (jnp.float32(0.1), np.float32(0.2)),
}


def scalar_loss(params):
    return model().calc_loss_from_params(params)


def entry_points(guess):
    """Each fit entry point's parameter history (and the gradient ones' gradient)."""
    m = model()
    fit = lambda p, k: jax.value_and_grad(scalar_loss)(p)  # noqa: E731
    return {
        "calc_dloss_dparams": m.calc_dloss_dparams(guess),
        "calc_loss_and_grad_from_params": m.calc_loss_and_grad_from_params(guess)[1],
        "run_simple_grad_descent": m.run_simple_grad_descent(guess, nsteps=3, progress=False).params,
        "run_adam": m.run_adam(guess, nsteps=3, progress=False)[0],
        "run_bfgs": m.run_bfgs(guess, maxsteps=3, progress=False)[0],
        "kdescent.adam": kdescent.adam(scalar_loss, guess, nsteps=3, randkey=None, progress=False)[0],
        "kdescent.bfgs": kdescent.bfgs(scalar_loss, guess, maxsteps=3, progress=False)[0],
        "optim.fit": optim.fit(fit, guess, optax.sgd(0.01), 3, progress=False).params,
        "optim.scipy_bfgs": optim.scipy_bfgs(fit, guess, 3, progress=False)[0],
    }


@pytest.mark.parametrize("kind", list(ARRAY_LIKE))
def test_array_like_guess_is_an_array(kind):
    guess = ARRAY_LIKE[kind]
    for name, out in entry_points(guess).items():
        assert isinstance(out, jax.Array), (name, type(out))
        assert jnp.issubdtype(out.dtype, jnp.floating), (name, out.dtype)
        if name.startswith("calc_"):
            assert out.shape == (2,), (name, out.shape)
        else:
            assert out.ndim == 2 and out.shape[1] == 2, (name, out.shape)
            np.testing.assert_allclose(out[0], np.asarray(guess, dtype=float), rtol=1e-6, err_msg=name)
    # The gradient is the same whatever the array-like spelling.
    np.testing.assert_allclose(model().calc_dloss_dparams(guess),
                               model().calc_dloss_dparams(jnp.asarray(np.asarray(guess, float))), rtol=1e-6)


class ModuleParams(eqx.Module):
    a: jax.Array
    b: jax.Array


PYTREES = {
    "dict": {"a": 0.1, "b": 0.2},
    "equinox Module": ModuleParams(jnp.float32(0.1), jnp.float32(0.2)),
}


@pytest.mark.parametrize("kind", list(PYTREES))
def test_other_pytrees_keep_their_structure(kind):
    guess = PYTREES[kind]
    structure = jax.tree_util.tree_structure(guess)
    for name, out in entry_points(guess).items():
        assert jax.tree_util.tree_structure(out) == structure, (name, out)
        leaves = jax.tree_util.tree_leaves(out)
        expected = () if name.startswith("calc_") else (len(leaves[0]),)
        assert all(leaf.shape == expected for leaf in leaves), (name, [leaf.shape for leaf in leaves])


def test_ragged_tuple_is_a_pytree():
    # Arrays of different shapes cannot be one array: the tuple stays a tuple.
    class Ragged(multigrad.OnePointModel):
        def calc_partial_sumstats_from_params(self, params):
            return jnp.concatenate([params[0], params[1]])

        def calc_loss_from_sumstats(self, sumstats):
            return jnp.sum(sumstats**2)

    guess = (jnp.ones(2), jnp.ones(3))
    grad = Ragged().calc_dloss_dparams(guess)
    assert isinstance(grad, tuple) and grad[0].shape == (2,) and grad[1].shape == (3,)
    params, _ = Ragged().run_adam(guess, nsteps=2, progress=False)
    assert isinstance(params, tuple) and params[0].shape == (3, 2) and params[1].shape == (3, 3)


@pytest.mark.parametrize("bad", [("a", "b"), [True, False], {"a": "x"}, np.array([1 + 2j])])
def test_non_numbers_are_refused_with_the_argument_named(bad):
    with pytest.raises((TypeError, ValueError), match="guess"):
        model().run_adam(bad, nsteps=2, progress=False)


# --- 3. small pretrainers -----------------------------------------------------------------------


def training_data(n=2_000, seed=11):
    return jax.random.multivariate_normal(
        jax.random.key(seed), jnp.array([1.0, 2.0, 3.0]),
        jnp.array([[3.0, 0.2, -0.1], [0.2, 5.0, 0.5], [-0.1, 0.5, 7.0]]), (n,))


def test_small_pretrainer_shrinks_the_default_number_of_evaluations(tmp_path):
    pre = kdescent.KPretrainer.from_training_data(
        training_data(), num_pretrain_kernels=10, num_pretrain_fourier_positions=10,
        inverse_density_weight_power=0.5, seed=0, comm=MPI.COMM_WORLD)
    assert pre.kernel_centers.shape == (10, 3) and pre.fourier_positions.shape == (10, 3)
    assert pre.num_eval_kernels == 10 and pre.num_eval_fourier_positions == 10
    pre.save(tmp_path / "small.npz")
    loaded = kdescent.KPretrainer.load(tmp_path / "small.npz")
    assert jnp.all(loaded.kde_counts == pre.kde_counts) and jnp.all(loaded.kernel_centers == pre.kernel_centers)
    # Fewer than the default only where given: the other side keeps 10 * ndim.
    one_sided = kdescent.KPretrainer.from_training_data(training_data(), num_pretrain_kernels=12)
    assert one_sided.num_eval_kernels == 12 and one_sided.num_eval_fourier_positions == 30
    # An explicit contradictory pair is still an error.
    with pytest.raises(ValueError, match=r"num_pretrain_kernels \(10\) must be >= num_eval_kernels \(11\)"):
        kdescent.KPretrainer.from_training_data(training_data(), num_eval_kernels=11, num_pretrain_kernels=10)


# --- 4. kdescent losses stay finite far from the data -------------------------------------------


def test_losses_stay_finite_and_ordered_far_from_the_data():
    x = training_data(100, seed=1)
    kcalc = kdescent.KCalc(kdescent.KPretrainer.from_training_data(
        x, num_eval_kernels=10, num_eval_fourier_positions=10, seed=1))
    key = jax.random.key(2)

    @jax.jit
    def losses(params):
        model_x = x * 0.999 + params[None, :]
        mk, tk = kcalc.compare_kde_counts(key, model_x)
        return jnp.mean((mk - tk) ** 2), kcalc.reduced_chisq_loss(key, model_x)

    near, worse, far = (losses(jnp.array(p)) for p in ([0.0, 0.0, 0.0], [0.9, -1.7, 2.4], [1e20, -1e20, 1e20]))
    for i in range(2):
        assert np.isfinite(far[i]) and far[i] > worse[i] > near[i] > 0, (i, near[i], worse[i], far[i])
    grad_far = jax.grad(lambda p: losses(p)[0])(jnp.array([1e20, -1e20, 1e20]))
    assert jnp.all(grad_far == 0)


# --- 5. the swarm and the release's entry points ---------------------------------------------


def test_swarm_results_dict_and_best():
    def sphere(x):
        return jnp.sum((x - 0.3) ** 2)

    swarm = multiswarm.ParticleSwarm(20, 3, -1.0, 1.0)
    results = swarm.run_pso(sphere, 30, progress=False)
    assert results["swarm_loss_history"].shape == (30, 20)
    assert results["swarm_x_history"].shape == (30, 20, 3)
    best_loss, best_params = multiswarm.get_best_loss_and_params(
        results["swarm_loss_history"], results["swarm_x_history"])
    assert best_params.shape == (3,) and best_loss == results["swarm_loss_history"].min()
    np.testing.assert_allclose(best_params, 0.3, atol=0.05)
    subcomm, mine = multiswarm.get_subcomm(20, return_particles_on_this_rank=True)
    assert subcomm.size == 1 and list(mine) == list(range(20))
    assert multiswarm.get_subcomm(20).size == 1


def test_release_names_exist():
    for module, names in {
        multigrad: ["OnePointModel", "OnePointGroup", "reduce_sum", "split_subcomms", "split_subcomms_by_node"],
        kdescent: ["KCalc", "KPretrainer", "adam", "bfgs"],
        multiswarm: ["ParticleSwarm", "get_best_loss_and_params", "get_subcomm"],
    }.items():
        missing = [n for n in names if not hasattr(module, n)]
        assert not missing, (module.__name__, missing)


# --- under mpiexec: fits on split data, the non-finite guess, the primitives -------------------


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_release_script_on_split_data(nranks):
    proc = run_mpi(TESTS / "mpi" / "release_compat.py", nranks, str(nranks))
    assert f"release compat: OK on {nranks} ranks" in proc.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 3])
def test_nonfinite_guess_raises_on_every_rank(nranks):
    proc = run_mpi(TESTS / "mpi" / "nonfinite_guess.py", nranks, str(nranks))
    assert f"nonfinite guess: OK on {nranks} ranks" in proc.stdout
    assert proc.stdout.count("not finite") == 8


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 3])
def test_public_primitives_are_exact(nranks):
    proc = run_mpi(TESTS / "mpi" / "primitives.py", nranks, str(nranks))
    assert f"primitives: OK on {nranks} ranks" in proc.stdout
