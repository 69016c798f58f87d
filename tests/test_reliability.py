"""Reliability: a failing rank ends the job, mismatches raise everywhere, NaN stops, checkpoints.

MPI cases run real scripts under ``mpiexec`` (tests/mpi/).
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TESTS, mpi_env, mpiexec_path, run_mpi
from diffopt import kdescent, multigrad, multiswarm

# --- a failing rank ends the job ------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize(
    "operation", ["sumstats", "loss_and_grad", "run_adam", "run_bfgs", "pso", "pretrainer"]
)
def test_failing_rank_ends_the_job(operation):
    proc = run_mpi(TESTS / "mpi" / "rank_raises.py", 3, "3", operation, check=False, timeout=120)
    ended = time.time()
    raised_at = float(re.search(r"RAISED_AT (\S+)", proc.stdout).group(1))
    assert proc.returncode != 0
    assert "unreachable" not in proc.stdout, "a rank carried on after another one raised"
    assert ended - raised_at < 10, f"the job took {ended - raised_at:.1f} s to end after the raise"
    # The original exception and traceback, once, tagged with the rank that raised.
    assert proc.stderr.count("[diffopt] rank 1 of 3 raised:") == 1
    assert proc.stderr.count("[diffopt] rank") == 1
    original = "ValueError: training_x contains NaN" if operation == "pretrainer" else (
        "RuntimeError: boom from the user's model")
    assert proc.stderr.count(original) == 1, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr


# --- mismatches across ranks ------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [2, 3])
def test_mismatch_across_ranks_raises_on_every_rank(nranks):
    proc = run_mpi(TESTS / "mpi" / "mismatch.py", nranks, str(nranks), timeout=300)
    assert f"mismatch: OK on {nranks} ranks" in proc.stdout
    assert proc.stdout.count("every rank raised") == 9


# --- non-finite losses and gradients -------------------------------------------------------------


@pytest.mark.mpi
def test_non_finite_gradient_stops_every_rank_at_the_same_step(tmp_path):
    for n in (1, 3):
        run_mpi(TESTS / "mpi" / "nan_stop.py", n, str(n), str(tmp_path / f"nan{n}.npz"))
    one, three = np.load(tmp_path / "nan1.npz"), np.load(tmp_path / "nan3.npz")
    assert sorted(one.files) == ["adam", "adamw", "bfgs", "grad_descent"]
    for name in one.files:
        assert one[name].shape == three[name].shape, name
        np.testing.assert_allclose(one[name], three[name], rtol=1e-12, err_msg=name)


def test_non_finite_loss_stops_kdescent_adam_with_the_step():
    def lossfunc(params, randkey):
        return jnp.where(params[0] > 1.0, jnp.nan, jnp.sum((params - 3.0) ** 2))

    with pytest.warns(RuntimeWarning, match=r"non-finite at step (\d+)") as record:
        params, losses = kdescent.adam(lossfunc, jnp.zeros(2), nsteps=200, learning_rate=0.1,
                                       progress=False)
    step = int(re.search(r"at step (\d+)", str(record[0].message)).group(1))
    assert 0 < step < 200 and params.shape == (step, 2) and losses.shape == (step,)
    assert np.all(np.isfinite(losses)) and float(params[-1, 0]) <= 1.0


# --- checkpoints ------------------------------------------------------------------------------------

def _steps_saved(checkpoint):
    """How many steps the checkpoint holds (0 while there is none)."""
    if not checkpoint.exists():
        return 0
    with np.load(checkpoint, allow_pickle=False) as f:
        return int(f["nsteps_done"]) if "nsteps_done" in f.files else len(f["loss_history"])


@pytest.mark.mpi
@pytest.mark.parametrize("kind, nranks, nsteps", [("adam", 1, 400), ("adam", 2, 400), ("pso", 2, 300)])
def test_job_killed_with_sigkill_resumes_to_identical_params(tmp_path, kind, nranks, nsteps):
    script = TESTS / "mpi" / "long_fit.py"
    run_mpi(script, nranks, str(nranks), kind, str(tmp_path / "reference.npy"))
    reference = np.load(tmp_path / "reference.npy")
    assert len(reference) == (nsteps + 1 if kind == "adam" else nsteps)

    # The whole job, every rank and mpiexec, is killed at once, as when a node is lost.
    checkpoint = tmp_path / "fit.npz"
    command = [mpiexec_path(), "-n", str(nranks), "--oversubscribe", sys.executable, str(script), str(nranks), kind,
               str(tmp_path / "killed.npy"), str(checkpoint)]
    proc = subprocess.Popen(command, env=mpi_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _steps_saved(checkpoint) < nsteps // 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the fit finished before it could be killed"
    assert not (tmp_path / "killed.npy").exists()
    resumed_from = _steps_saved(checkpoint)
    assert nsteps // 4 <= resumed_from < nsteps and resumed_from % 20 == 0

    run_mpi(script, nranks, str(nranks), kind, str(tmp_path / "resumed.npy"), str(checkpoint))
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), reference)
    assert not list(tmp_path.glob("*tmp*")), "a temporary checkpoint file was left behind"


class Quadratic(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        return params**2

    def calc_loss_from_sumstats(self, sumstats):
        return jnp.sum((sumstats - 1.0) ** 2)


def test_fit_checkpoint_of_another_problem_is_refused(tmp_path):
    path = tmp_path / "fit.npz"
    model = Quadratic()
    model.run_adam(jnp.zeros(2) + 0.1, nsteps=30, progress=False, checkpoint=path, checkpoint_every=10)
    with pytest.raises(ValueError, match="belongs to a different problem"):
        model.run_adam(jnp.zeros(3) + 0.1, nsteps=30, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="belongs to a different problem"):
        model.run_adam(jnp.zeros(2) + 0.1, nsteps=30, progress=False, checkpoint=path,
                       param_bounds=[(0, 1), None])
    with pytest.raises(ValueError, match="already holds 30 steps"):
        model.run_adam(jnp.zeros(2) + 0.1, nsteps=20, progress=False, checkpoint=path)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a diffopt fit checkpoint"):
        model.run_adam(jnp.zeros(2) + 0.1, nsteps=30, progress=False, checkpoint=tmp_path / "other.npz")


def test_kdescent_adam_resumes_and_extends_a_fit(tmp_path):
    def lossfunc(params, randkey):
        return jnp.sum((params - jax.random.normal(randkey, (2,)) * 0.1 - 1.0) ** 2)

    kwargs = dict(learning_rate=0.05, randkey=3, progress=False)
    whole = kdescent.adam(lossfunc, jnp.zeros(2), nsteps=60, **kwargs)
    path = tmp_path / "k.npz"
    kdescent.adam(lossfunc, jnp.zeros(2), nsteps=30, checkpoint=path, checkpoint_every=10, **kwargs)
    extended = kdescent.adam(lossfunc, jnp.zeros(2), nsteps=60, checkpoint=path, checkpoint_every=10, **kwargs)
    for a, b in zip(whole, extended):
        np.testing.assert_array_equal(a, b)


# --- loaded files are never unpickled ------------------------------------------------------------


class _Trap:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("loader", ["fit checkpoint", "swarm checkpoint", "pretrainer"])
def test_loaded_files_are_never_unpickled(tmp_path, loader):
    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.npz"
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(marker)
    np.savez(path, format=np.array(trap), problem=trap, state_0=trap, __format__=trap,
             kernel_centers=trap)
    assert pickle.loads(pickle.dumps(trap[0])) and marker.exists()  # the trap works...
    marker.unlink()
    load = {
        "fit checkpoint": lambda: Quadratic().run_adam(jnp.ones(2), nsteps=3, progress=False,
                                                       checkpoint=path),
        "swarm checkpoint": lambda: multiswarm.ParticleSwarm(4, 2, -1, 1).run_pso(
            lambda x: jnp.sum(x**2), nsteps=2, progress=False, checkpoint=path),
        "pretrainer": lambda: kdescent.KPretrainer.load(path),
    }[loader]
    with pytest.raises(ValueError):
        load()
    assert not marker.exists()  # ...and diffopt never sprang it
