"""multigrad/optim figures, each a ratio measured in one run.

    .venv/bin/python benchmarks/bench_multigrad.py            # fit-loop and BFGS ratios
    .venv/bin/python benchmarks/bench_multigrad.py --scaling  # 1 vs 2 ranks, 1,000,000 halos

1. run_adam steps/s divided by calls/s of a bare jax.jit(jax.value_and_grad(loss)),
   seed SMF model, 10,000 halos (target >= 0.7).
2. BFGS wall time / (nfev x one bare jitted value_and_grad call) (target <= 2).
3. With --scaling: steps/s of run_adam on 2 ranks / on 1 rank, 1,000,000 halos,
   each rank pinned to one XLA thread (target >= 1.9).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


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


def fit_ratio():
    import jax

    model, guess = build(10_000)
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
    print(f"bare jitted value_and_grad: {1 / t_bare:9.0f} calls/s ({t_bare * 1e6:.1f} us/call)")
    print(f"run_adam ({nsteps} steps):    {1 / t_adam:9.0f} steps/s")
    print(f"RATIO run_adam steps/s / bare calls/s = {t_bare / t_adam:.2f}   (target >= 0.7)")

    model.run_bfgs(guess, progress=False)  # compile
    t0 = time.perf_counter()
    _, _, res = model.run_bfgs(guess, progress=False)
    t_bfgs = time.perf_counter() - t0
    print(f"BFGS: {t_bfgs * 1e3:.1f} ms, nfev = {res.nfev}, success = {res.success}")
    print(f"RATIO BFGS wall / (nfev x bare call) = {t_bfgs / (res.nfev * t_bare):.2f}   (target <= 2)")


def scaling_worker(nsteps=200):
    from mpi4py import MPI

    model, guess = build(1_000_000)
    model.run_adam(guess, nsteps=10, progress=False)
    MPI.COMM_WORLD.Barrier()
    t = best_of(lambda: model.run_adam(guess, nsteps=nsteps, progress=False), 3)
    if MPI.COMM_WORLD.rank == 0:
        print(f"STEPS_PER_SECOND {nsteps / t:.3f}")


def scaling():
    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
    from mpi_launcher import environment_bin, launcher

    # Not mpi_environ(): its oversubscription setting turns Open MPI's binding off.
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               PATH=environment_bin() + os.pathsep + os.environ.get("PATH", ""))
    rates = {}
    for n in (1, 2):
        # $DIFFOPT_MPIEXEC, else the environment's mpiexec; --bind-to is an mpiexec option.
        out = subprocess.run([*launcher(env), "-n", str(n), "--bind-to", "core", sys.executable, __file__,
                              "--worker"], env=env, capture_output=True, text=True, check=True).stdout
        rates[n] = float(out.split("STEPS_PER_SECOND")[1].split()[0])
        print(f"{n} rank(s), 1,000,000 halos, one XLA thread per rank: {rates[n]:.2f} steps/s")
    print(f"RATIO 2 ranks / 1 rank = {rates[2] / rates[1]:.2f}   (target >= 1.9)")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        scaling_worker()
    elif "--scaling" in sys.argv:
        scaling()
    else:
        fit_ratio()
