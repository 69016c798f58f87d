"""multigrad/optim figures, each a ratio measured within one run, over several runs.

    .venv/bin/python benchmarks/bench_multigrad.py [--runs 5]            # fit-loop and BFGS ratios
    .venv/bin/python benchmarks/bench_multigrad.py --scaling [--runs 5]  # 1 vs 2 ranks, 1,000,000 halos

Each figure is measured ``--runs`` times in this invocation; the median and
the spread (min, max) of those runs are printed.

1. run_adam steps/s divided by calls/s of a bare jax.jit(jax.value_and_grad(loss)),
   seed SMF model, 10,000 halos (target >= 0.7).
2. BFGS wall time (best of 3) / (nfev x one bare jitted value_and_grad call) (target <= 2).
3. With --scaling: steps/s of run_adam on 2 ranks / on 1 rank, 1,000,000 halos,
   each rank pinned to one XLA thread (target >= 1.9).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _runs import summary  # noqa: E402


def build(num_halos):
    import runpy

    import jax.numpy as jnp

    seed = runpy.run_path(str(HERE.parent / "examples" / "smf_grad_descent.py"), run_name="smf")
    volume, edges = 1.0, jnp.linspace(9, 10, 11)
    true = jnp.array([-2.0, -0.5])
    lhm = jnp.log10(jnp.asarray(seed["load_halo_masses"](num_halos)))
    target = seed["multigrad"].reduce_sum(seed["calc_smf"](true, edges, volume, lhm))
    model = seed["MySMFModel"](aux_data=dict(
        log_halo_masses=lhm, smf_bin_edges=edges, volume=volume, target_sumstats=target))
    return model, true + jnp.array([-1.5, 0.7])


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fit_ratio(model, guess):
    """One run: (run_adam steps/s / bare calls/s, BFGS wall / (nfev x bare call))."""
    import jax

    bare = jax.jit(jax.value_and_grad(model.calc_loss_from_params))
    jax.block_until_ready(bare(guess))
    n_calls = 2000

    def calls():
        p = guess
        for _ in range(n_calls):
            out = bare(p)
        jax.block_until_ready(out)

    t_bare = best_of(calls, 3) / n_calls
    nsteps = 2000
    model.run_adam(guess, nsteps=nsteps, progress=False)  # compile
    t_adam = best_of(lambda: model.run_adam(guess, nsteps=nsteps, progress=False), 3) / nsteps
    _, _, res = model.run_bfgs(guess, progress=False)  # compile
    t_bfgs = best_of(lambda: model.run_bfgs(guess, progress=False), 3)
    print(f"  bare jitted value_and_grad {1 / t_bare:7.0f} calls/s, run_adam ({nsteps} steps) "
          f"{1 / t_adam:7.0f} steps/s, BFGS {t_bfgs * 1e3:.1f} ms ({res.nfev} evaluations)")
    return t_bare / t_adam, t_bfgs / (res.nfev * t_bare)


def fit_ratios(runs):
    model, guess = build(10_000)
    adam, bfgs = zip(*(fit_ratio(model, guess) for _ in range(runs)))
    print(f"RATIO run_adam steps/s / bare calls/s: {summary(adam)}   (target >= 0.7)")
    print(f"RATIO BFGS wall / (nfev x bare call): {summary(bfgs)}   (target <= 2)")


def scaling_worker(nsteps=200):
    from mpi4py import MPI

    model, guess = build(1_000_000)
    model.run_adam(guess, nsteps=10, progress=False)
    MPI.COMM_WORLD.Barrier()
    t = best_of(lambda: model.run_adam(guess, nsteps=nsteps, progress=False), 3)
    if MPI.COMM_WORLD.rank == 0:
        print(f"STEPS_PER_SECOND {nsteps / t:.3f}")


def scaling(runs):
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from mpi_launcher import environment_bin, launcher

    # Not mpi_environ(): its oversubscription setting turns Open MPI's binding off.
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               PATH=environment_bin() + os.pathsep + os.environ.get("PATH", ""))
    ratios = []
    for _ in range(runs):
        rates = {}
        for n in (1, 2):
            # $DIFFOPT_MPIEXEC, else the environment's mpiexec; --bind-to is an mpiexec option.
            out = subprocess.run([*launcher(env), "-n", str(n), "--bind-to", "core", sys.executable, __file__,
                                  "--worker"], env=env, capture_output=True, text=True, check=True).stdout
            rates[n] = float(out.split("STEPS_PER_SECOND")[1].split()[0])
        print(f"  1,000,000 halos, one XLA thread per rank: 1 rank {rates[1]:.2f} steps/s, "
              f"2 ranks {rates[2]:.2f} steps/s")
        ratios.append(rates[2] / rates[1])
    print(f"RATIO 2 ranks / 1 rank: {summary(ratios)}   (target >= 1.9)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each figure")
    parser.add_argument("--scaling", action="store_true", help="1 vs 2 ranks, 1,000,000 halos")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        scaling_worker()
    elif args.scaling:
        scaling(args.runs)
    else:
        fit_ratios(args.runs)
