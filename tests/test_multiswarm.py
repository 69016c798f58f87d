"""Tests of diffopt.multiswarm: convergence, rank independence, errors, checkpoints."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffopt import multiswarm

MPI_SCRIPTS = Path(__file__).parent / "mpi"

HISTORY_NAMES = ("swarm_x_history", "swarm_v_history", "swarm_loss_history")


def ackley(x):
    a = 20 * jnp.exp(-0.2 * jnp.sqrt(0.5 * jnp.sum(x**2, axis=0)))
    b = jnp.exp(0.5 * jnp.sum(jnp.cos(2 * jnp.pi * x), axis=0))
    return 20 + jnp.e - a - b


def numpy_ackley(x):
    """Ackley written so that JAX cannot trace it."""
    x = np.array([float(xi) for xi in x])
    a = 20 * np.exp(-0.2 * np.sqrt(0.5 * np.sum(x**2)))
    b = np.exp(0.5 * np.sum(np.cos(2 * np.pi * x)))
    return 20 + np.e - a - b


@pytest.fixture
def x64():
    """float64 for this test only, so the rest of the session is unaffected."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def ackley_minimum():
    # Check the function itself rather than trusting a quoted constant.
    return float(ackley(jnp.zeros(4)))


def run_ackley(**kwargs):
    swarm = multiswarm.ParticleSwarm(nparticles=100, ndim=4, xlow=-5, xhigh=5, seed=0)
    return swarm.run_pso(ackley, **{"nsteps": 100, "progress": False, **kwargs})


# -- convergence and the shape of the results ---------------------------------------


def test_ackley_converges_on_one_rank(ackley_minimum):
    results = run_ackley()
    assert results["swarm_x_history"].shape == (100, 100, 4)
    assert results["swarm_v_history"].shape == (100, 100, 4)
    assert results["swarm_loss_history"].shape == (100, 100)
    assert results["runtime"] > 0
    best_loss, best_params = multiswarm.get_best_loss_and_params(
        results["swarm_loss_history"], results["swarm_x_history"]
    )
    assert best_loss - ackley_minimum < 0.01
    assert np.all(np.abs(best_params) < 0.01)
    # Particles stay in the box.
    assert np.all(np.abs(results["swarm_x_history"]) <= 5)


def test_speeds_capped_at_vmax_frac():
    swarm = multiswarm.ParticleSwarm(50, 3, [0, -1, 10], [1, 1, 20], vmax_frac=0.1, seed=2)
    results = swarm.run_pso(ackley, nsteps=20, progress=False)
    vmax = 0.1 * np.array([1, 2, 10])
    assert np.all(np.abs(results["swarm_v_history"]) <= vmax * (1 + 1e-6))
    x = results["swarm_x_history"]
    assert np.all((x >= [0, -1, 10]) & (x <= [1, 1, 20]))


def test_initial_positions_are_a_latin_hypercube():
    swarm = multiswarm.ParticleSwarm(nparticles=40, ndim=3, xlow=[0, 0, -2], xhigh=[1, 10, 2])
    # One particle in each of the 40 equal slices of every dimension.
    cells = np.floor((swarm.x_init - swarm.xlow) / (swarm.xhigh - swarm.xlow) * 40)
    for d in range(3):
        assert sorted(cells[:, d]) == list(range(40))
    assert np.all(np.abs(swarm.v_init) <= 0.4 * (swarm.xhigh - swarm.xlow))


def test_personal_bests_are_tracked_per_particle():
    """Each particle's best changes only when that particle improves (NaN never does)."""
    state = multiswarm.SwarmState(
        x=jnp.array([[0.0], [1.0], [2.0]]),
        v=jnp.zeros((3, 1)),
        best_x=jnp.array([[5.0], [5.0], [5.0]]),
        best_loss=jnp.array([1.0, 1.0, 1.0]),
    )
    from diffopt.multiswarm._update import record_losses

    updated = record_losses(state, jnp.array([0.5, 2.0, jnp.nan]))
    np.testing.assert_array_equal(updated.best_loss, [0.5, 1.0, 1.0])
    np.testing.assert_array_equal(updated.best_x[:, 0], [0.0, 5.0, 5.0])


def test_get_best_loss_and_params():
    losses = np.array([[3.0, 2.0], [np.nan, 1.5]])
    params = np.arange(8.0).reshape(2, 2, 2)
    best_loss, best_params = multiswarm.get_best_loss_and_params(losses, params)
    assert best_loss == 1.5
    np.testing.assert_array_equal(best_params, [6.0, 7.0])
    with pytest.raises(ValueError, match="params_history"):
        multiswarm.get_best_loss_and_params(losses, params[:1])


# -- random state --------------------------------------------------------------------


def test_keep_init_random_state_repeats_the_run():
    swarm = multiswarm.ParticleSwarm(30, 2, -5, 5, seed=3)
    first = swarm.run_pso(ackley, nsteps=10, progress=False, keep_init_random_state=True)
    again = swarm.run_pso(ackley, nsteps=10, progress=False, keep_init_random_state=True)
    advanced = swarm.run_pso(ackley, nsteps=10, progress=False)
    after = swarm.run_pso(ackley, nsteps=10, progress=False)
    for name in HISTORY_NAMES:
        np.testing.assert_array_equal(first[name], again[name])
        # The state was kept, so the next run starts from it too...
        np.testing.assert_array_equal(first[name], advanced[name])
    # ...and then advances: same start, new random factors from the first move on.
    np.testing.assert_array_equal(advanced["swarm_x_history"][0], after["swarm_x_history"][0])
    assert not np.array_equal(advanced["swarm_x_history"][1], after["swarm_x_history"][1])


def test_seed_may_be_a_key_and_seeds_differ():
    a = multiswarm.ParticleSwarm(10, 2, -1, 1, seed=jax.random.key(7))
    b = multiswarm.ParticleSwarm(10, 2, -1, 1, seed=7)
    c = multiswarm.ParticleSwarm(10, 2, -1, 1, seed=8)
    np.testing.assert_array_equal(a.x_init, b.x_init)
    assert not np.array_equal(a.x_init, c.x_init)


# -- loss evaluation -----------------------------------------------------------------


def test_non_traceable_loss_falls_back_to_a_loop(x64, ackley_minimum):
    swarm = multiswarm.ParticleSwarm(100, 4, -5, 5, seed=0)
    results = swarm.run_pso(numpy_ackley, nsteps=100, progress=False)
    best_loss, _ = multiswarm.get_best_loss_and_params(
        results["swarm_loss_history"], results["swarm_x_history"]
    )
    assert best_loss - ackley_minimum < 0.01
    with pytest.raises(jax.errors.ConcretizationTypeError):
        swarm.run_pso(numpy_ackley, nsteps=2, progress=False, vectorize=True)


def test_vectorized_and_looped_evaluation_agree(x64):
    swarm = multiswarm.ParticleSwarm(20, 4, -5, 5, seed=4)
    fast = swarm.run_pso(ackley, nsteps=15, progress=False, keep_init_random_state=True)
    slow = swarm.run_pso(ackley, nsteps=15, progress=False, keep_init_random_state=True, vectorize=False)
    for name in HISTORY_NAMES:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-12, atol=1e-12)


def test_loss_must_return_a_scalar():
    swarm = multiswarm.ParticleSwarm(5, 3, -1, 1)
    with pytest.raises(ValueError, match="scalar"):
        swarm.run_pso(lambda x: x**2, nsteps=2, progress=False)
    with pytest.raises(ValueError, match="scalar"):
        swarm.run_pso(lambda x: np.asarray(x) ** 2, nsteps=2, progress=False)


def test_progress_bar(capsys):
    swarm = multiswarm.ParticleSwarm(5, 2, -1, 1)
    swarm.run_pso(ackley, nsteps=3, progress=True)
    assert "PSO" in capsys.readouterr().err
    swarm.run_pso(ackley, nsteps=3, progress=False)
    assert capsys.readouterr().err == ""


# -- invalid arguments ---------------------------------------------------------------

# -- checkpoints ---------------------------------------------------------------------


def test_checkpoint_resumes_an_interrupted_run(tmp_path):
    path = tmp_path / "swarm.npz"
    uninterrupted = multiswarm.ParticleSwarm(20, 3, -5, 5, seed=5).run_pso(
        numpy_ackley, nsteps=12, progress=False
    )

    calls = 0

    def crashing_loss(x):
        nonlocal calls
        calls += 1
        if calls > 20 * 7:
            raise RuntimeError("node lost")
        return numpy_ackley(x)

    with pytest.raises(RuntimeError, match="node lost"):
        multiswarm.ParticleSwarm(20, 3, -5, 5, seed=5).run_pso(
            crashing_loss, nsteps=12, progress=False, checkpoint=path, checkpoint_every=3
        )
    with np.load(path, allow_pickle=False) as saved:
        assert int(saved["nsteps_done"]) == 6

    evaluated = []

    def counted_loss(x):
        loss = numpy_ackley(x)  # raises when JAX tries to trace it: only real calls count
        evaluated.append(1)
        return loss

    resumed = multiswarm.ParticleSwarm(20, 3, -5, 5, seed=5).run_pso(
        counted_loss, nsteps=12, progress=False, checkpoint=path, checkpoint_every=3
    )
    assert len(evaluated) == (12 - 6) * 20  # it went on from step 6
    for name in HISTORY_NAMES:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name])
    # A finished run resumes to the same answer without evaluating anything.
    again = multiswarm.ParticleSwarm(20, 3, -5, 5, seed=5).run_pso(
        crashing_loss, nsteps=12, progress=False, checkpoint=path
    )
    for name in HISTORY_NAMES:
        np.testing.assert_array_equal(again[name], uninterrupted[name])
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize(
    "other, match",
    [
        (dict(nparticles=21), "nparticles"),
        (dict(ndim=4), "ndim"),
        (dict(xhigh=6), "xhigh"),
    ],
)
def test_checkpoint_of_another_problem_is_refused(tmp_path, other, match):
    path = tmp_path / "swarm.npz"
    problem = dict(nparticles=20, ndim=3, xlow=-5, xhigh=5)
    multiswarm.ParticleSwarm(**problem).run_pso(ackley, nsteps=3, progress=False, checkpoint=path)
    swarm = multiswarm.ParticleSwarm(**{**problem, **other})
    with pytest.raises(ValueError, match=f"another problem.*{match}"):
        swarm.run_pso(ackley, nsteps=3, progress=False, checkpoint=path)


def test_checkpoint_errors(tmp_path):
    path = tmp_path / "swarm.npz"
    swarm = multiswarm.ParticleSwarm(10, 2, -1, 1)
    swarm.run_pso(ackley, nsteps=5, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="already holds 5 steps"):
        swarm.run_pso(ackley, nsteps=4, progress=False, checkpoint=path)

    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a diffopt.multiswarm checkpoint"):
        swarm.run_pso(ackley, nsteps=5, progress=False, checkpoint=tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot be read as .npz"):
        swarm.run_pso(ackley, nsteps=5, progress=False, checkpoint=tmp_path / "junk.npz")


# -- several ranks -------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [2, 3])
def test_ackley_on_several_ranks_matches_one_rank(tmp_path, x64, mpirun, nranks):
    out = tmp_path / "history.npz"
    mpirun(MPI_SCRIPTS / "swarm_ackley.py", nranks, str(nranks), str(out), timeout=120)
    single = run_ackley()
    with np.load(out, allow_pickle=False) as multi:
        for name in HISTORY_NAMES:
            # Bitwise: the swarm update is the same computation on every rank.
            np.testing.assert_array_equal(multi[name], single[name], err_msg=name)


@pytest.mark.mpi
@pytest.mark.parametrize("nranks, ranks_per_particle", [(3, 3), (4, 2)])
def test_ranks_per_particle_with_a_parallel_loss(tmp_path, x64, mpirun, nranks, ranks_per_particle):
    out = tmp_path / "history.npz"
    mpirun(MPI_SCRIPTS / "swarm_subcomm.py", nranks, str(nranks), str(out), str(ranks_per_particle), timeout=120)
    single = multiswarm.ParticleSwarm(nparticles=20, ndim=4, xlow=-5, xhigh=5, seed=1).run_pso(
        numpy_ackley, nsteps=15, progress=False
    )
    with np.load(out, allow_pickle=False) as multi:
        # The parallel loss adds its partial sums in another order: the
        # losses agree to rounding, and the moves (decided by comparing
        # losses) are the same.
        np.testing.assert_array_equal(multi["swarm_x_history"], single["swarm_x_history"])
        np.testing.assert_array_equal(multi["swarm_v_history"], single["swarm_v_history"])
        np.testing.assert_allclose(multi["swarm_loss_history"], single["swarm_loss_history"], rtol=1e-13)
