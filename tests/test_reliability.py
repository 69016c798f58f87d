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

from conftest import TESTS, mpi_command, mpi_env, run_mpi
from diffopt import kdescent, multigrad, multiswarm

# --- a failing rank ends the job ------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize(
    "operation", ["sumstats", "loss_and_grad", "run_adam", "run_bfgs", "pso", "pretrainer"]
)
def test_failing_rank_ends_the_job(operation, tmp_path):
    stamp = tmp_path / "raised_at"
    proc = run_mpi(TESTS / "mpi" / "rank_raises.py", 3, "3", operation, str(stamp), check=False, timeout=120)
    ended = time.time()
    raised_at = float(stamp.read_text())
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


@pytest.mark.mpi
@pytest.mark.parametrize("no_abort", [False, True])
def test_diffopt_no_abort_leaves_the_exception_hook_alone(no_abort):
    env = mpi_env(DIFFOPT_NO_ABORT="1") if no_abort else mpi_env()
    if not no_abort:
        env.pop("DIFFOPT_NO_ABORT", None)
    proc = run_mpi(TESTS / "mpi" / "no_abort.py", 2, "2", env=env, check=False, timeout=120)
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: Python's own excepthook: {no_abort}" in proc.stdout, proc.stdout
    assert proc.stderr.count("RuntimeError: raised on rank 1") == 1, proc.stderr[-3000:]
    if no_abort:
        assert "[diffopt]" not in proc.stderr
        assert "rank 0: finished" in proc.stdout  # nothing aborted it
    else:
        assert "[diffopt] rank 1 of 2 raised:" in proc.stderr


# --- mismatches across ranks ------------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [2, 3])
def test_mismatch_across_ranks_raises_on_every_rank(nranks):
    proc = run_mpi(TESTS / "mpi" / "mismatch.py", nranks, str(nranks), timeout=300)
    assert f"mismatch: OK on {nranks} ranks" in proc.stdout
    assert proc.stdout.count("every rank raised") == 10


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

def _evaluations(output: str) -> int:
    """The ``loss evaluations: N`` that tests/mpi/long_fit.py printed."""
    return int(re.search(r"loss evaluations: (\d+)", output).group(1))


def _evaluated_so_far(log) -> int:
    """The last ``evaluated K`` that a running long_fit.py printed (0 before the first)."""
    found = re.findall(r"evaluated (\d+)\n", log.read_text()) if log.exists() else []
    return int(found[-1]) if found else 0


@pytest.mark.mpi
@pytest.mark.parametrize("kind, nranks, nsteps", [("adam", 1, 400), ("adam", 2, 400), ("pso", 2, 300)])
def test_job_killed_with_sigkill_resumes_to_identical_params(tmp_path, kind, nranks, nsteps):
    script = TESTS / "mpi" / "long_fit.py"
    # Loss evaluations per step: of the whole job, and of rank 0 (adam: every
    # rank evaluates the loss once; pso: 12 particles shared among the ranks).
    per_step, rank0_per_step = (1, 1) if kind == "adam" else (12, 12 // nranks)
    proc = run_mpi(script, nranks, str(nranks), kind, str(tmp_path / "reference.npy"))
    reference = np.load(tmp_path / "reference.npy")
    assert len(reference) == (nsteps + 1 if kind == "adam" else nsteps)
    assert nsteps * per_step <= _evaluations(proc.stdout) <= (nsteps + 1) * per_step

    # The whole job, every rank and mpiexec, is killed at once, as when a node
    # is lost: once rank 0 has evaluated step `saved` (and so written the
    # checkpoint of the steps before it, every 20 steps).
    saved, checkpoint, log = 100, tmp_path / "fit.npz", tmp_path / "killed.log"
    command = mpi_command(nranks, sys.executable, str(script), str(nranks), kind, str(tmp_path / "killed.npy"),
                          str(checkpoint))
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=mpi_env(), start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while (_evaluated_so_far(log) < (saved + 1) * rank0_per_step and time.time() < deadline
               and proc.poll() is None):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the fit finished before it could be killed"
    assert not (tmp_path / "killed.npy").exists()
    killed_at = _evaluated_so_far(log) // rank0_per_step
    assert saved < killed_at < nsteps, killed_at

    # The rerun resumes from the last checkpoint: it evaluates the loss only
    # for the steps that were left, and ends where an uninterrupted fit does.
    proc = run_mpi(script, nranks, str(nranks), kind, str(tmp_path / "resumed.npy"), str(checkpoint))
    steps_run = _evaluations(proc.stdout) / per_step
    assert nsteps - killed_at <= steps_run <= nsteps - saved + 1, (
        f"the rerun took {steps_run} steps; killed after {killed_at} of {nsteps} steps, with at least "
        f"{saved} checkpointed"
    )
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
    with pytest.raises(ValueError, match="belongs to another problem"):
        model.run_adam(jnp.zeros(3) + 0.1, nsteps=30, progress=False, checkpoint=path)
    with pytest.raises(ValueError, match="belongs to another problem"):
        model.run_adam(jnp.zeros(2) + 0.1, nsteps=30, progress=False, checkpoint=path,
                       param_bounds=[(0, 1), None])
    with pytest.raises(ValueError, match="already holds 30 steps"):
        model.run_adam(jnp.zeros(2) + 0.1, nsteps=20, progress=False, checkpoint=path)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a diffopt fit checkpoint"):
        model.run_adam(jnp.zeros(2) + 0.1, nsteps=30, progress=False, checkpoint=tmp_path / "other.npz")


def test_fit_checkpoint_of_another_random_key_is_refused(tmp_path):
    def lossfunc(params, randkey=None):
        noise = 0.0 if randkey is None else 0.1 * jax.random.normal(randkey, (2,))
        return jnp.sum((params - 1.0 - noise) ** 2)

    path = tmp_path / "fit.npz"
    kwargs = dict(nsteps=30, progress=False, checkpoint=path, checkpoint_every=10)
    kdescent.adam(lossfunc, jnp.zeros(2), **{**kwargs, "nsteps": 20}, randkey=7)
    with pytest.raises(ValueError, match="written with a different randkey"):
        kdescent.adam(lossfunc, jnp.zeros(2), **kwargs, randkey=8)
    with pytest.raises(ValueError, match="belongs to another problem.*a random key"):
        kdescent.adam(lossfunc, jnp.zeros(2), **kwargs, randkey=None)
    # The same key resumes.
    kdescent.adam(lossfunc, jnp.zeros(2), **kwargs, randkey=7)


_evaluated = []  # one entry per evaluation of CountedQuadratic's loss


class CountedQuadratic(Quadratic):
    def calc_loss_from_sumstats(self, sumstats):
        jax.debug.callback(lambda: _evaluated.append(1))
        return super().calc_loss_from_sumstats(sumstats)


def test_simple_grad_descent_resumes_from_its_checkpoint(tmp_path):
    evaluated = _evaluated
    model = CountedQuadratic()
    kwargs = dict(learning_rate=0.05, progress=False)
    whole = model.run_simple_grad_descent(jnp.array([0.1, 0.3]), nsteps=50, **kwargs)
    path = tmp_path / "gd.npz"
    model.run_simple_grad_descent(jnp.array([0.1, 0.3]), nsteps=20, checkpoint=path, checkpoint_every=10,
                                  **kwargs)
    evaluated.clear()
    resumed = model.run_simple_grad_descent(jnp.array([0.1, 0.3]), nsteps=50, checkpoint=path,
                                            checkpoint_every=10, **kwargs)
    assert 30 <= len(evaluated) <= 31, len(evaluated)  # it went on from step 20
    np.testing.assert_array_equal(resumed.params, whole.params)
    np.testing.assert_array_equal(resumed.loss, whole.loss)


def test_kdescent_adam_resumes_and_extends_a_fit(tmp_path):
    evaluations = []

    def lossfunc(params, randkey):
        jax.debug.callback(lambda: evaluations.append(1))
        return jnp.sum((params - jax.random.normal(randkey, (2,)) * 0.1 - 1.0) ** 2)

    kwargs = dict(learning_rate=0.05, randkey=3, progress=False)
    whole = kdescent.adam(lossfunc, jnp.zeros(2), nsteps=60, **kwargs)
    assert 60 <= len(evaluations) <= 61
    path = tmp_path / "k.npz"
    kdescent.adam(lossfunc, jnp.zeros(2), nsteps=30, checkpoint=path, checkpoint_every=10, **kwargs)
    evaluations.clear()
    extended = kdescent.adam(lossfunc, jnp.zeros(2), nsteps=60, checkpoint=path, checkpoint_every=10, **kwargs)
    # It went on from step 30: it evaluated the loss for the 30 steps left only.
    assert 30 <= len(evaluations) <= 31, len(evaluations)
    for a, b in zip(whole, extended):
        np.testing.assert_array_equal(a, b)


# A process that dies while it writes its third checkpoint: ``numpy.savez``,
# which the writer calls, writes half of the archive and ends the process on
# the spot, as SIGKILL or a lost node would. The problems are defined here
# once, for that process and for the test that resumes after it.
DYING_WRITER = """
import io, os, sys
import jax, jax.numpy as jnp, numpy as np, optax
from diffopt import multiswarm, optim

def fit_loss_and_grad(params, randkey):
    target = jnp.array([1.0, 2.0]) + 0.1 * jax.random.normal(randkey, (2,))
    return jax.value_and_grad(lambda p: jnp.sum((p - target) ** 2))(params)

def run_fit(path, loss_and_grad=fit_loss_and_grad):
    return optim.fit(loss_and_grad, jnp.zeros(2), optax.adam(0.05), 50, randkey=3, progress=False,
                     checkpoint=path, checkpoint_every=10)

def swarm_loss(x):
    return float(np.sum((np.asarray(x) - 0.5) ** 2))

def run_swarm(path, loss=swarm_loss):
    return multiswarm.ParticleSwarm(20, 3, -5, 5, seed=5).run_pso(
        loss, nsteps=12, progress=False, checkpoint=path, checkpoint_every=3)

if __name__ == "__main__":
    real_savez, writes = np.savez, []

    def dying_savez(file, *args, **arrays):
        writes.append(1)
        if len(writes) < 3:
            return real_savez(file, *args, **arrays)
        archive = io.BytesIO()
        real_savez(archive, *args, **arrays)
        file.write(archive.getvalue()[: len(archive.getvalue()) // 2])
        file.flush()
        os._exit(9)

    np.savez = dying_savez
    {"fit": run_fit, "swarm": run_swarm}[sys.argv[1]](sys.argv[2])
    print("the writer never died")
"""


@pytest.mark.parametrize("kind", ["fit", "swarm"])
def test_death_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, kind):
    program = tmp_path / "dying_writer.py"
    program.write_text(DYING_WRITER)
    path = tmp_path / "checkpoint.npz"
    proc = subprocess.run([sys.executable, str(program), kind, str(path)], capture_output=True,
                          text=True, timeout=300, env=mpi_env())
    assert proc.returncode == 9, proc.stdout + proc.stderr[-3000:]

    problems = {}
    exec(compile(DYING_WRITER, "dying_writer", "exec"), problems)
    evaluated = []
    if kind == "fit":
        def counted(params, randkey):
            jax.debug.callback(lambda: evaluated.append(1))
            return problems["fit_loss_and_grad"](params, randkey)

        uninterrupted = problems["run_fit"](None)
        resumed = problems["run_fit"](path, counted)
        steps_left = 50 - 20  # the second checkpoint holds 20 steps
        rows = zip(uninterrupted[:2], resumed[:2])
    else:
        def counted(x):
            loss = problems["swarm_loss"](x)  # JAX cannot trace it: only real calls count
            evaluated.append(1)
            return loss

        uninterrupted = problems["run_swarm"](None)
        resumed = problems["run_swarm"](path, counted)
        steps_left = (12 - 6) * 20  # the second checkpoint holds 6 steps of 20 particles
        rows = ((uninterrupted[n], resumed[n]) for n in ("swarm_x_history", "swarm_loss_history"))
    assert steps_left <= len(evaluated) <= steps_left + 1, len(evaluated)
    for a, b in rows:
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
