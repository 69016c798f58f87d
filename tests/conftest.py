"""Shared test helpers. MPI tests run real scripts under a real ``mpiexec``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent


def mpiexec_path() -> str:
    """The ``mpiexec`` next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec found: run scripts/setup.sh to install an MPI runtime")
    return found


def mpi_env(threads_per_rank: int = 1, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",
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


def run_mpi(
    script: str | Path,
    nranks: int,
    *args: str,
    timeout: float = 300,
    check: bool = True,
    env: dict | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python script *args`` on ``nranks`` ranks under mpiexec.

    With ``check`` (the default) a non-zero exit on any rank fails the test
    and shows the output of every rank.
    """
    cmd = [
        mpiexec_path(), "-n", str(nranks), "--oversubscribe",
        sys.executable, str(script), *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout,
        env=env or mpi_env(), cwd=cwd,
    )
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
