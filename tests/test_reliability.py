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

from conftest import REPO, TESTS, run_mpi
from diffopt import kdescent, multigrad, multiswarm

# --- a failing rank ends the job ------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize(
    "operation", ["sumstats", "loss_and_grad", "run_adam", "run_bfgs", "pso", "pretrainer"]
)
def test_failing_rank_ends_the_job(operation):
    proc = run_mpi(TESTS / "mpi" / "rank_raises.py", 3, operation, check=False, timeout=120)
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
    proc = run_mpi(TESTS / "mpi" / "mismatch.py", nranks, timeout=300)
    assert f"mismatch: OK on {nranks} ranks" in proc.stdout
    assert proc.stdout.count("every rank raised") == 9


# --- non-finite losses and gradients -------------------------------------------------------------


@pytest.mark.mpi
def test_non_finite_gradient_stops_every_rank_at_the_same_step(tmp_path):
    for n in (1, 3):
        run_mpi(TESTS / "mpi" / "nan_stop.py", n, str(tmp_path / f"nan{n}.npz"))
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

FIT_SCRIPT = r"""
import sys, time
import jax, jax.numpy as jnp, numpy as np
from diffopt import multigrad

class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params, randkey):
        x = self.aux_data
        return jnp.stack([jnp.sum(jnp.exp(-(x - params[0]) ** 2 / params[1])), jnp.sum(x * params[0])])

    def calc_loss_from_sumstats(self, sumstats, randkey):
        jax.debug.callback(lambda: time.sleep(0.004))  # a slow model, so the fit can be killed
        noise = 0.01 * jax.random.normal(randkey)
        return jnp.sum((sumstats - jnp.array([12.0, 3.0])) ** 2) * (1 + noise)

out, checkpoint = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
model = Model(aux_data=jnp.linspace(-2, 3, 40))
params = model.run_adam(jnp.array([0.3, 1.0]), nsteps=400, learning_rate=0.02, randkey=7,
                        param_bounds=[None, (0.1, 5.0)], progress=False,
                        checkpoint=checkpoint, checkpoint_every=20)
np.save(out, np.asarray(params))
"""


def _fit_command(*args):
    return [sys.executable, "-c", FIT_SCRIPT, *map(str, args)]


def _fit_env():
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_fit_killed_with_sigkill_resumes_to_identical_params(tmp_path):
    subprocess.run(_fit_command(tmp_path / "reference.npy"), env=_fit_env(), check=True, timeout=300)
    reference = np.load(tmp_path / "reference.npy")
    assert reference.shape == (401, 2)

    checkpoint = tmp_path / "fit.npz"
    proc = subprocess.Popen(_fit_command(tmp_path / "killed.npy", checkpoint), env=_fit_env())
    deadline = time.time() + 240
    saved_step = 0
    while saved_step < 100 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if checkpoint.exists():
            with np.load(checkpoint, allow_pickle=False) as f:
                saved_step = len(f["loss_history"])
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the fit finished before it could be killed"
    assert not (tmp_path / "killed.npy").exists()
    with np.load(checkpoint, allow_pickle=False) as f:
        resumed_from = len(f["loss_history"])
    assert 100 <= resumed_from < 400 and resumed_from % 20 == 0

    subprocess.run(_fit_command(tmp_path / "resumed.npy", checkpoint), env=_fit_env(), check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), reference)
    assert not list(tmp_path.glob("*.tmp")), "a temporary checkpoint file was left behind"


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
