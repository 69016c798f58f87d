"""Reliability figures, each measured in one run.

    .venv/bin/python benchmarks/bench_reliability.py

1. Seconds from one rank raising to the end of a 3-rank job (every rank
   exited), for each kind of multi-rank operation of tests/mpi/rank_raises.py
   (target < 10 s).
2. Cost of the in-graph check that sumstats shapes and dtypes agree across
   ranks: calls/s of a jitted value_and_grad of the seed SMF model (10,000
   halos, 2 ranks, one XLA thread each) with the check, divided by calls/s of
   the same model as a fit runs it (layouts compared once on the host, no
   check in the compiled code). A ratio near 1 means the check is cheap.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts"))
from mpi_launcher import launcher, mpi_environ  # noqa: E402  ($DIFFOPT_MPIEXEC, else the environment's mpiexec)

ENV = dict(mpi_environ(), XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           PYTHONPATH=str(REPO))
OPERATIONS = ["sumstats", "loss_and_grad", "run_adam", "run_bfgs", "pso", "pretrainer"]


def time_to_end():
    worst = 0.0
    for operation in OPERATIONS:
        proc = subprocess.run(
            [*launcher(ENV), "-n", "3", sys.executable,
             str(REPO / "tests" / "mpi" / "rank_raises.py"), operation],
            env=ENV, capture_output=True, text=True, timeout=120,
        )
        ended = time.time()
        raised_at = float(re.search(r"RAISED_AT (\S+)", proc.stdout).group(1))
        worst = max(worst, ended - raised_at)
        print(f"{operation:14s} exit status {proc.returncode}, job ended {ended - raised_at:.3f} s after the raise")
    print(f"FIGURE slowest end after a raise, 3 ranks: {worst:.3f} s   (target < 10 s)")


def check_cost_worker(ncalls=3000):
    import jax
    from mpi4py import MPI

    sys.path.insert(0, str(HERE))
    from bench_multigrad import best_of, build

    model, guess = build(10_000)
    fit_copy = model._for_fit(guess)  # what run_adam/run_bfgs run: no in-graph check
    rates = {}
    for name, m in (("checked every call", model), ("checked once", fit_copy)):
        step = jax.jit(jax.value_and_grad(m.calc_loss_from_params))
        jax.block_until_ready(step(guess))

        def calls():
            for _ in range(ncalls):
                out = step(guess)
            jax.block_until_ready(out)

        MPI.COMM_WORLD.Barrier()
        rates[name] = ncalls / best_of(calls, 5)
    if MPI.COMM_WORLD.rank == 0:
        for name, rate in rates.items():
            print(f"  {name:20s} {rate:8.0f} calls/s")
        ratio = rates["checked every call"] / rates["checked once"]
        print(f"RATIO with the in-graph check / without, 2 ranks = {ratio:.3f}")


def check_cost():
    proc = subprocess.run([MPIEXEC, "-n", "2", "--bind-to", "core", sys.executable, __file__, "--worker"],
                          env=ENV, capture_output=True, text=True, check=True, timeout=600)
    print(proc.stdout.rstrip())


if __name__ == "__main__":
    if "--worker" in sys.argv:
        check_cost_worker()
    else:
        time_to_end()
        check_cost()
