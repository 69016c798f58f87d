"""A site's own MPI, played by a second MPI: PyPI's MPICH installed into a prefix of its own.

With MPICH's ``mpicc`` and ``mpiexec`` first on PATH, ``scripts/setup.sh
--system-mpi`` builds mpi4py and mpi4jax from source into a fresh
environment, reports MPICH, and that environment runs the 2-rank exactness
test under MPICH's ``mpiexec``. An environment whose mpi4py and launcher come
from different MPIs fails setup, and the launcher check, with a message
naming both.

The build takes minutes: those tests are marked ``system_mpi`` (``pytest -m
"not system_mpi"`` leaves them out; ``.ci/run`` runs them). The others need
only the MPICH prefix (seconds).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SHARED_TMPDIR, TESTS, launcher, mpi_command, mpi_env, run_mpi
from mpi_launcher import launcher_version, library_version

pytestmark = pytest.mark.mpi
CHECK = [sys.executable, str(REPO / "scripts" / "mpi_launcher.py")]


@pytest.fixture(scope="module")
def mpich(tmp_path_factory) -> Path:
    """The ``bin/`` of a prefix holding PyPI's MPICH (mpicc, mpiexec, libmpi), as a site install."""
    prefix = tmp_path_factory.mktemp("mpich")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--prefix", str(prefix),
                           "mpich"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"these tests need PyPI's mpich as a second MPI; `pip install --prefix {prefix} mpich` "
                    f"failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}", pytrace=False)
    for tool in ("mpicc", "mpiexec", "mpichversion"):
        assert (prefix / "bin" / tool).is_file(), f"PyPI's mpich installed no {tool} into {prefix}/bin"
    return prefix / "bin"


def mpich_version(mpich: Path) -> str:
    out = subprocess.run([str(mpich / "mpichversion")], capture_output=True, text=True, check=True).stdout
    return " ".join(out.splitlines()[0].split())  # "MPICH Version: 5.0.2"


def site_env(mpich: Path, **extra: str) -> dict:
    """This environment as a cluster user's shell has it after loading the MPI: MPICH first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DIFFOPT_", "MPICC", "MPI4JAX_", "VIRTUAL_ENV", "SLURM_"))}
    env["PATH"] = str(mpich) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def open_mpi_launcher() -> str:
    """The launcher of this test environment, which must be another MPI than MPICH."""
    if "MPICH" in library_version():
        pytest.fail(f"the mismatch tests need this environment's MPI to differ from MPICH; it is "
                    f"{library_version()} (run them from an environment set up by scripts/setup.sh)",
                    pytrace=False)
    return launcher()[0]


# --- the launcher check, with the environment of the tests (seconds) -------------------------


def test_the_check_passes_with_this_environments_launcher():
    proc = subprocess.run(CHECK, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mpi check: ok, one 2-rank job" in proc.stdout


def test_the_launcher_setting_may_be_a_whole_prefix():
    # Any launcher prefix works: here `env` runs this environment's mpiexec with a variable set.
    env = dict(os.environ, DIFFOPT_MPIEXEC=f"env DIFFOPT_TEST_PREFIX=1 {launcher()[0]}")
    proc = subprocess.run(CHECK, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"the launcher {shutil.which('env')} DIFFOPT_TEST_PREFIX=1 {launcher()[0]} is" in proc.stdout


def test_the_check_fails_for_a_launcher_of_another_mpi(mpich):
    ours = library_version()
    open_mpi_launcher()
    env = dict(os.environ, DIFFOPT_MPIEXEC=str(mpich / "mpiexec"))
    proc = subprocess.run(CHECK, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = proc.stderr
    assert "mpi check: FAILED" in message and "They must be the same MPI" in message, message
    # Both MPIs are named: mpi4py's library and the launcher's version.
    assert ours in message and launcher_version([str(mpich / "mpiexec")]) in message, message
    assert "Version: 5" in launcher_version([str(mpich / "mpiexec")])


def test_a_missing_launcher_is_named(tmp_path):
    env = dict(os.environ, DIFFOPT_MPIEXEC=str(tmp_path / "no-such-mpiexec"))
    proc = subprocess.run(CHECK, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert f"DIFFOPT_MPIEXEC='{tmp_path / 'no-such-mpiexec'}' is not on PATH" in proc.stderr


def planting_launcher(folder: str) -> str:
    """A launcher that leaves Open MPI session files of its own process id in ``folder``, then runs ``mpiexec``.

    ``exec`` keeps the process id, so ``mpiexec`` meets the files a killed job
    of an earlier ``mpiexec`` with that id would have left.
    """
    host = socket.gethostname().split(".")[0]
    plant = (f'mkdir -p "$0/ompi.$$" && : > "$0/ompi.$$/pmix.{host}.tool" && '
             f'echo "planted $0/ompi.$$" >&2 && exec "$@"')
    return shlex.join(["sh", "-c", plant, folder, launcher()[0]])


def test_session_files_left_in_the_shared_tmpdir_do_not_stop_the_tests_jobs(private_job_tmpdir):
    assert os.environ["TMPDIR"] == str(private_job_tmpdir) != SHARED_TMPDIR
    env = mpi_env(DIFFOPT_MPIEXEC=planting_launcher(SHARED_TMPDIR))
    # The tests' jobs (their own TMPDIR), then the same job with the shared folder as TMPDIR.
    jobs = [run_mpi(TESTS / "mpi" / "primitives.py", 1, "1", env=job_env, timeout=120, check=False)
            for job_env in (env, dict(env, TMPDIR=SHARED_TMPDIR))]
    planted = [job.stderr.split("planted ")[1].split()[0] for job in jobs]
    for folder in planted:
        shutil.rmtree(folder, ignore_errors=True)
    ours, shared = jobs
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert all(Path(folder).parent == Path(SHARED_TMPDIR) for folder in planted), planted
    if "Open MPI" in library_version():
        assert shared.returncode == 213, shared.stdout + shared.stderr
        assert "The PMIx server's listener thread failed to start" in shared.stderr


# --- setup --system-mpi against the second MPI (minutes) ----------------------------------------


@pytest.fixture(scope="module")
def site_venv(mpich, tmp_path_factory) -> tuple[Path, str]:
    """A fresh environment made by ``setup.sh --system-mpi`` with MPICH first on PATH; and its output."""
    venv = tmp_path_factory.mktemp("site") / "venv"
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--system-mpi"], capture_output=True,
                          text=True, timeout=2400, env=site_env(mpich, VENV=str(venv), PYTHON=sys._base_executable))
    print(f"setup.sh --system-mpi against MPICH took {time.perf_counter() - start:.0f} s")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return venv, proc.stdout


@pytest.mark.system_mpi
def test_system_mpi_setup_uses_the_site_mpi_and_runs_two_ranks(mpich, site_venv):
    venv, output = site_venv
    assert f"setup: mpi4py uses the MPI library: {mpich_version(mpich)}" in output, output
    assert f"the launcher {mpich / 'mpiexec'} is" in output and "mpi check: ok" in output, output
    # Nothing MPI came from PyPI into the environment.
    assert not (venv / "bin" / "mpiexec").exists() and not (venv / "bin" / "mpicc").exists()
    assert (venv / "diffopt-mpi.txt").read_text().strip() == f"system {mpich / 'mpicc'}"

    env = site_env(mpich, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    command = mpi_command(2, str(venv / "bin" / "python"), str(TESTS / "mpi" / "multigrad_exact.py"), "2", "4", env=env)
    assert command[0] == str(mpich / "mpiexec")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "multigrad exact: OK on 2 ranks" in proc.stdout


@pytest.mark.system_mpi
def test_setup_fails_when_mpi4py_and_the_launcher_are_different_mpis(mpich, site_venv):
    venv, _ = site_venv
    other = open_mpi_launcher()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup.sh"), "--system-mpi"], capture_output=True,
                          text=True, timeout=1200, env=site_env(mpich, VENV=str(venv), DIFFOPT_MPIEXEC=other))
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "mpi check: FAILED" in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert mpich_version(mpich) in proc.stderr and launcher_version([other]) in proc.stderr, proc.stderr
