"""The MPI launcher that diffopt's scripts, tests and docs start jobs with, and its check.

The launcher is ``$DIFFOPT_MPIEXEC``, split into words as a shell splits it,
or ``mpiexec`` when that is unset: the first ``mpiexec`` on PATH, with the
environment's ``bin/`` first on PATH (so the virtual environment's own
``mpiexec`` when it has one). Jobs are started as ``LAUNCHER -n N python
SCRIPT``, so the variable may hold a whole prefix: ``srun``, ``srun
--mpi=pmix``, or ``/usr/bin/mpiexec --mca pml ucx``. Flags that only one MPI
knows are given as environment variables, which the others ignore (see
``mpi_environ``).

    python scripts/mpi_launcher.py             # check: exit 1 with a message on a mismatch
    python scripts/mpi_launcher.py --library   # print mpi4py's MPI library version

The check (run at the end of scripts/setup.sh) starts a 2-rank job with the
launcher, each rank importing mpi4py only, and passes when both ranks see one
job of 2 ranks. A launcher of another MPI than mpi4py's starts processes that
each see a job of 1 rank, fail, or hang: the check then fails within a
timeout, naming mpi4py's MPI library and the launcher.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

PROBE = """\
from mpi4py import MPI
comm = MPI.COMM_WORLD
print(f"DIFFOPT_MPI_PROBE rank={comm.rank} size={comm.size}", flush=True)
"""


def environment_bin() -> str:
    """The ``bin/`` folder of the running Python's environment."""
    return str(Path(sys.executable).parent)


def mpi_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) ready for ``launcher``.

    The environment's ``bin/`` goes first on PATH. Open MPI may run as root
    and start more ranks than there are cores, through its environment
    variables (``--oversubscribe`` and ``--allow-run-as-root`` would be
    errors for other launchers, and the variables are ignored by them).
    """
    env = dict(os.environ if environ is None else environ)
    env["PATH"] = environment_bin() + os.pathsep + env.get("PATH", "")
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",  # Open MPI 4
        PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe",  # Open MPI 5
    )
    return env


def launcher(environ: Mapping[str, str] | None = None) -> list[str]:
    """The launcher prefix: ``$DIFFOPT_MPIEXEC`` (default ``mpiexec``), first word resolved on PATH.

    ``environ`` defaults to ``mpi_environ()``. Raises ``RuntimeError`` when
    the launcher is not found.
    """
    env = mpi_environ() if environ is None else environ
    setting = env.get("DIFFOPT_MPIEXEC", "").strip()
    words = shlex.split(setting) if setting else ["mpiexec"]
    found = shutil.which(words[0], path=env.get("PATH"))
    if found is None:
        where = f"DIFFOPT_MPIEXEC={setting!r}" if setting else "mpiexec (DIFFOPT_MPIEXEC is unset)"
        raise RuntimeError(
            f"MPI launcher not found: {where} is not on PATH. Run scripts/setup.sh, load the "
            "site's MPI, or set DIFFOPT_MPIEXEC to the launcher (mpiexec, srun, ...)"
        )
    return [found, *words[1:]]


@contextmanager
def private_tmpdir() -> Iterator[str]:
    """A new empty folder for ``TMPDIR`` of the jobs started inside the block; removed after it.

    Open MPI 5 keeps a job's session files in ``$TMPDIR/ompi.PID``, PID being
    the process id of ``mpiexec``. A job killed with its launcher leaves them
    behind, and a later ``mpiexec`` given the same process id stops at start:
    "The PMIx server's listener thread failed to start" (exit status 213).
    Jobs whose ``TMPDIR`` is a fresh folder cannot meet such leftovers, and
    what a killed job leaves goes with the folder.
    """
    with tempfile.TemporaryDirectory(prefix="diffopt-mpi-", ignore_cleanup_errors=True) as folder:
        yield folder


def library_version() -> str:
    """The first line of the version string of the MPI library that mpi4py uses."""
    import mpi4py

    mpi4py.rc.initialize = False  # MPI_Get_library_version needs no MPI_Init
    from mpi4py import MPI

    return " ".join(MPI.Get_library_version().replace("\0", "").split("\n")[0].split())


def run_bounded(command: list[str], timeout: float, env: Mapping[str, str] | None = None) -> tuple[int | None, str]:
    """Run ``command``; return its exit status (None if it ran out of time) and its output.

    On a timeout the whole process group is killed: a launcher's children too.
    """
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output
    return proc.returncode, output


def launcher_version(command: list[str]) -> str:
    """What ``LAUNCHER --version`` says about itself (its first informative line)."""
    try:
        status, output = run_bounded([command[0], "--version"], timeout=20)
    except OSError as exc:
        return f"unknown ({command[0]} --version failed: {exc})"
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    if status is None:
        return f"unknown ({command[0]} --version did not finish)"
    # MPICH's and Intel MPI's Hydra print a header, then "Version: ...".
    for line in lines:
        if line.startswith("Version:"):
            return f"{lines[0].rstrip(':')} {line}"
    return lines[0] if lines else f"unknown ({command[0]} --version printed nothing)"


def check(timeout: float = 120) -> tuple[bool, str]:
    """Start a 2-rank probe job with the launcher: is it one job of mpi4py's MPI?

    Returns whether it is, and a description naming both MPIs (with why not).
    """
    env = mpi_environ()
    try:
        command = launcher(env)
    except RuntimeError as exc:
        return False, str(exc)
    named = (f"mpi4py ({Path(sys.executable).parent.parent}) uses {library_version()}; the "
             f"launcher {shlex.join(command)} is {launcher_version(command)}")
    probe = [*command, "-n", "2", sys.executable, "-c", PROBE]
    with private_tmpdir() as folder:
        status, output = run_bounded(probe, timeout, {**env, "TMPDIR": folder})
    if status is None:
        return False, (f"a 2-rank job did not finish within {timeout:.0f} s. {named}. They are "
                       f"probably not the same MPI.\n--- output ---\n{output[-3000:]}")
    # MPI forwards the ranks' output unbuffered, so two reports can share a line.
    sizes = sorted(re.findall(r"DIFFOPT_MPI_PROBE rank=\d+ size=(\d+)", output))
    if status == 0 and sizes == ["2", "2"]:
        return True, named
    started = f"`{shlex.join([*command, '-n', '2'])} python`"
    if sizes:
        what = (f"{started} started {len(sizes)} process(es) that saw jobs of {'/'.join(sizes)} "
                f"rank(s) (exit status {status}), not one job of 2 ranks")
    else:
        what = f"{started} exited with status {status} before any rank reported its job"
    return False, f"{what}. {named}. They must be the same MPI.\n--- output ---\n{output[-3000:]}"


def main() -> int:
    if sys.argv[1:] == ["--library"]:
        print(library_version())
        return 0
    ok, description = check()
    if ok:
        print(f"mpi check: ok, one 2-rank job: {description}")
        return 0
    print(
        f"mpi check: FAILED: {description}\n"
        "Start jobs with the launcher of mpi4py's MPI library (set DIFFOPT_MPIEXEC to it), or set "
        "the environment up for the launcher's MPI: `bash scripts/setup.sh --system-mpi` with that "
        "MPI's mpicc first on PATH (or MPICC=...). Under Slurm, run this where srun may start a "
        "job (inside salloc or sbatch).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
