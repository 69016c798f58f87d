"""examples/cluster/: the halos each rank makes, and both job scripts, really run here.

The batch script runs outside Slurm with ``DIFFOPT_MPIEXEC`` naming this
environment's launcher (under Slurm its default is ``srun``), on a small
number of halos.
"""

from __future__ import annotations

import re
import runpy
import shlex
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from conftest import REPO, launcher, mpi_env

CLUSTER = REPO / "examples" / "cluster"


@pytest.mark.parametrize("num_halos", [1, 7, 1000, 10_001])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_each_rank_makes_its_share_of_the_seed_halos(num_halos, size):
    seed = runpy.run_path(str(REPO / "examples" / "smf_grad_descent.py"), run_name="seed")
    halos_of_rank = runpy.run_path(str(CLUSTER / "smf_fit.py"), run_name="smf_fit")["halo_masses_of_rank"]
    everything = np.asarray(seed["load_halo_masses"](num_halos, comm=MPI.COMM_SELF))
    for rank, expected in enumerate(np.array_split(everything, size)):
        # The seed works in float32; the cluster script in float64.
        np.testing.assert_allclose(halos_of_rank(num_halos, rank, size), expected, rtol=1e-6)


def run_job_script(name: str, nranks: int) -> str:
    env = {k: v for k, v in mpi_env().items() if not k.startswith("SLURM_")}
    env.update(DIFFOPT_MPIEXEC=shlex.join(launcher(env)), NRANKS=str(nranks), NUM_HALOS="2e4",
               VENV=sys.prefix, MPLBACKEND="Agg")
    proc = subprocess.run(["bash", str(CLUSTER / name)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("name, nranks", [("smf_fit.sbatch", 2), ("smf_fit_mpiexec.sh", 3)])
def test_job_script_fits_the_seed_model(name, nranks):
    out = run_job_script(name, nranks)
    assert f"{nranks} rank(s) on 1 node(s), 20,000 halos in all" in out, out
    counts = [int(m.replace(",", "")) for m in re.findall(r"^  rank \d+: .* ([\d,]+) halos$", out, re.M)]
    assert counts == [len(block) for block in np.array_split(np.arange(20_000), nranks)], out
    assert "BFGS has converged: True" in out, out
    fitted = out.split("Converged params =")[1].strip().strip("[]").split()
    np.testing.assert_allclose(np.array(fitted, dtype=float), [-2.0, -0.5], atol=1e-4)
