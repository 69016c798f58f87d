"""Reliability figures, each measured within one run, over several runs.

    .venv/bin/python benchmarks/bench_reliability.py [--runs 5]

Each figure is measured ``--runs`` times; the median and the spread (min,
max) of the runs are printed.

1. Seconds from one rank raising to the end of a 3-rank job (every rank
   exited), for each kind of multi-rank operation of tests/mpi/rank_raises.py
   (target < 10 s).
2. Cost of the in-graph check that sumstats shapes and dtypes agree across
   ranks: calls/s of a jitted value_and_grad of the seed SMF model (10,000
   halos, 2 ranks, one XLA thread each) with the check, divided by calls/s of
   the same model as a fit runs it (layouts compared once on the host, no
   check in the compiled code). A ratio near 1 means the check is cheap.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _runs import summary  # noqa: E402

REPO = HERE.parent
sys.path.insert(0, str(REPO / "scripts"))
from mpi_launcher import launcher, mpi_environ  # noqa: E402  ($DIFFOPT_MPIEXEC, else the environment's mpiexec)

ENV = dict(mpi_environ(), XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
           PYTHONPATH=str(REPO))
OPERATIONS = ["sumstats", "loss_and_grad", "run_adam", "run_bfgs", "pso", "pretrainer"]


def time_to_end():
    """One run: the seconds from the raise to the end of the job, for each operation."""
    seconds = {}
    for operation in OPERATIONS:
        with tempfile.TemporaryDirectory() as tmp:
            stamp = Path(tmp) / "raised_at"
            proc = subprocess.run(
                [*launcher(ENV), "-n", "3", sys.executable,
                 str(REPO / "tests" / "mpi" / "rank_raises.py"), "3", operation, str(stamp)],
                env=ENV, capture_output=True, text=True, timeout=120, check=False,
            )
            ended = time.time()
            raised_at = float(stamp.read_text())
        assert proc.returncode != 0, f"{operation}: the job did not fail"
        seconds[operation] = ended - raised_at
    print("  job ended after the raise: " + ", ".join(f"{op} {t:.3f} s" for op, t in seconds.items()))
    return seconds


def times_to_end(runs):
    every = [time_to_end() for _ in range(runs)]
    print(f"FIGURE slowest end after a raise, 3 ranks: {summary([max(r.values()) for r in every], '{:.3f}')} s"
          "   (target < 10 s)")
    print(f"FIGURE any end after a raise, 3 ranks: "
          f"{summary([t for r in every for t in r.values()], '{:.3f}')} s")


def check_cost_worker(ncalls=3000, repeats=5):
    import jax
    from mpi4py import MPI

    sys.path.insert(0, str(HERE))
    from bench_multigrad import build

    model, guess = build(10_000)
    fit_copy = model._for_fit(guess)  # what run_adam/run_bfgs run: no in-graph check
    steps = {name: jax.jit(jax.value_and_grad(m.calc_loss_from_params))
             for name, m in (("checked every call", model), ("checked once", fit_copy))}
    best = {}
    for _ in range(repeats):  # interleaved, so that changes of load hit both alike
        for name, step in steps.items():
            jax.block_until_ready(step(guess))
            MPI.COMM_WORLD.Barrier()
            t0 = time.perf_counter()
            for _ in range(ncalls):
                out = step(guess)
            jax.block_until_ready(out)
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
    if MPI.COMM_WORLD.rank == 0:
        print("  " + ", ".join(f"{name} {ncalls / t:.0f} calls/s" for name, t in best.items()))
        print(f"RATIO {best['checked once'] / best['checked every call']:.4f}")


def check_cost(runs):
    ratios = []
    for _ in range(runs):
        proc = subprocess.run([*launcher(ENV), "-n", "2", "--bind-to", "core", sys.executable, __file__, "--worker"],
                              env=ENV, capture_output=True, text=True, check=True, timeout=600)
        print(proc.stdout.rstrip().rsplit("\n", 1)[0])
        ratios.append(float(proc.stdout.split("RATIO")[1].split()[0]))
    print(f"FIGURE calls/s with the in-graph check / without, 2 ranks: {summary(ratios)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each figure")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        check_cost_worker()
    else:
        times_to_end(args.runs)
        check_cost(args.runs)
