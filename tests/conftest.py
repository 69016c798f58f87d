"""Shared test helpers. MPI tests run real scripts under a real ``mpiexec``.

Jobs start with the launcher of scripts/mpi_launcher.py: ``$DIFFOPT_MPIEXEC``
(for example ``srun`` or a site's ``mpiexec``), else the environment's
``mpiexec``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
sys.path.insert(0, str(REPO / "scripts"))
from mpi_launcher import launcher, mpi_environ, private_tmpdir  # noqa: E402

# The temporary folder the test run was started with, shared with every other process here.
SHARED_TMPDIR = tempfile.gettempdir()


@pytest.fixture(autouse=True)
def private_job_tmpdir(monkeypatch) -> Iterator[Path]:
    """Each test's processes, MPI jobs included, get a ``TMPDIR`` of their own.

    Session files that a killed Open MPI job left in a shared ``TMPDIR`` stop a
    later job whose ``mpiexec`` gets the same process id (see
    ``mpi_launcher.private_tmpdir``).
    """
    with private_tmpdir() as folder:
        monkeypatch.setenv("TMPDIR", folder)
        yield Path(folder)


def mpiexec_path() -> str:
    """The launcher's executable (``$DIFFOPT_MPIEXEC``'s first word, else the environment's ``mpiexec``)."""
    return launcher()[0]


def mpi_env(threads_per_rank: int = 1, **extra: str) -> dict:
    """The environment of an MPI job: the launcher's (``mpi_launcher.mpi_environ``), and one XLA thread per rank."""
    env = mpi_environ()
    env.update(
        # Several ranks share two cores: one XLA thread each avoids thrashing.
        XLA_FLAGS=(
            "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            if threads_per_rank == 1
            else env.get("XLA_FLAGS", "")
        ),
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def mpi_command(nranks: int, *command: str, env: dict | None = None) -> list[str]:
    """``LAUNCHER -n nranks *command``, the launcher taken from ``env`` (default ``mpi_env()``)."""
    return [*launcher(env or mpi_env()), "-n", str(nranks), *command]


def run_mpi(
    script: str | Path,
    nranks: int,
    *args: str,
    timeout: float = 300,
    check: bool = True,
    env: dict | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python script *args`` on ``nranks`` ranks with the MPI launcher.

    With ``check`` (the default) a non-zero exit on any rank fails the test
    and shows the output of every rank.
    """
    env = env or mpi_env()
    cmd = mpi_command(nranks, sys.executable, str(script), *args, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited with {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n{proc.stderr[-8000:]}",
            pytrace=False,
        )
    return proc


@pytest.fixture
def mpirun():
    return run_mpi
