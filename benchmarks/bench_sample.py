"""Sampling figures (issue 16), each a ratio measured in one run.

    .venv/bin/python benchmarks/bench_sample.py            # 1-3 below
    .venv/bin/python benchmarks/bench_sample.py --scaling  # 4: 1 vs 2 ranks, 1,000,000 halos

1. Effective samples per second of the slowest parameter, diffopt's NUTS
   ÷ emcee's ensemble sampler (2 x ndim walkers, the same log-density
   jitted and vectorised over walkers, one process), on a 10-parameter
   Gaussian likelihood with correlated parameters (target >= 10).
2. The same ratio on the seed SMF model's 2-parameter posterior.
3. Time per leapfrog step of ``run_nuts`` on 1 rank (its draws, the time of
   the same warm-up alone taken out) ÷ the same blackjax NUTS kernel in a
   bare jitted ``lax.scan`` on a plain log-density of the same data, with
   the step size ``run_nuts`` adapted (target: bare ÷ ours >= 0.9, i.e. the
   communication layer and loop cost nothing), and against one jitted
   ``value_and_grad`` of that log-density, the floor of a leapfrog step.
4. With --scaling: draws per second of ``run_nuts`` on 2 ranks ÷ 1 rank,
   seed SMF with 1,000,000 halos, each rank one XLA thread (target >= 1.8).

Timings are of a second call (compiled); ESS is blackjax's for NUTS and
emcee's integrated autocorrelation time for emcee (ESS = draws / tau).
"""

from __future__ import annotations

import functools
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).parent


def timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def correlated_gaussian(ndim=10, seed=0):
    """A linear model y = X theta + noise whose design makes the parameters correlated."""
    rng = np.random.default_rng(seed)
    mixing = np.eye(ndim) + 0.9 * rng.normal(size=(ndim, ndim)) / np.sqrt(ndim)
    X = rng.normal(size=(200, ndim)) @ mixing * np.logspace(-1, 1, ndim)
    y = X @ rng.normal(size=ndim) + rng.normal(size=200)
    X, y = jnp.asarray(X), jnp.asarray(y)

    def logdensity(theta):
        return -0.5 * jnp.sum((y - X @ theta) ** 2)

    guess = jnp.linalg.lstsq(X, y)[0]
    return logdensity, guess


def smf_posterior(num_halos=10_000, comm=None):
    seed = runpy.run_path(str(HERE.parent / "examples" / "smf_grad_descent.py"), run_name="smf")
    from mpi4py import MPI

    comm = comm or MPI.COMM_WORLD

    class SMFLikelihood(seed["MySMFModel"]):
        def calc_loss_from_sumstats(self, sumstats):
            measured = self.aux_data["target_sumstats"]
            return 0.5 * jnp.sum(((sumstats - measured) / (0.05 * measured)) ** 2)

    truth, edges = jnp.array([-2.0, -0.5]), jnp.linspace(9, 10, 11)
    log_mh = jnp.log10(jnp.asarray(seed["load_halo_masses"](num_halos, comm=comm)))
    target = seed["multigrad"].reduce_sum(seed["calc_smf"](truth, edges, 1.0, log_mh), comm=comm)
    model = SMFLikelihood(aux_data=dict(log_halo_masses=log_mh, smf_bin_edges=edges, volume=1.0,
                                        target_sumstats=target), comm=comm)
    return model, truth, seed, (edges, log_mh, target)


def nuts_ess_rate(logdensity, guess, nsamples, **kwargs):
    from diffopt import sample

    run = lambda key: sample.nuts(logdensity, guess, nsamples, randkey=key, progress=False, **kwargs)  # noqa: E731
    run(0)
    result, seconds = timed(lambda: run(1))
    ess = float(np.min(np.asarray(jax.tree_util.tree_leaves(result.info.ess))))
    return ess / seconds, ess, seconds, result


def emcee_ess_rate(logdensity, guess, nsteps, burn):
    import emcee

    ndim = int(guess.size)
    batched = jax.jit(jax.vmap(logdensity))
    log_prob = lambda walkers: np.asarray(batched(jnp.asarray(walkers)))  # noqa: E731
    log_prob(np.zeros((2 * ndim, ndim)))  # compile
    start = np.asarray(guess) + 1e-3 * np.random.default_rng(0).normal(size=(2 * ndim, ndim))
    sampler = emcee.EnsembleSampler(2 * ndim, ndim, log_prob, vectorize=True)
    _, seconds = timed(lambda: sampler.run_mcmc(start, nsteps, progress=False))
    chain = sampler.get_chain(discard=burn)
    tau = emcee.autocorr.integrated_time(chain, quiet=True)
    ess = chain.shape[0] * chain.shape[1] / np.max(tau)
    return ess / seconds, ess, seconds


def ess_ratio(name, logdensity, guess, nuts_draws, emcee_steps, **kwargs):
    ours, ess, seconds, _ = nuts_ess_rate(logdensity, guess, nuts_draws, **kwargs)
    theirs, eess, eseconds = emcee_ess_rate(logdensity, guess, emcee_steps, emcee_steps // 5)
    print(f"{name}: NUTS {ess:.0f} ESS (slowest parameter) in {seconds:.2f} s = {ours:.0f}/s; "
          f"emcee {eess:.0f} ESS in {eseconds:.2f} s = {theirs:.0f}/s")
    print(f"RATIO {name} NUTS ESS/s / emcee ESS/s = {ours / theirs:.1f}")


def per_leapfrog_ratio():
    import blackjax.mcmc.hmc
    import blackjax.mcmc.nuts

    model, truth, seed, (edges, log_mh, target) = smf_posterior(100_000)

    def plain(params, data):  # the same log-density, no diffopt in it
        edges, log_mh, target = data
        smf = seed["calc_smf"](params, edges, 1.0, log_mh)
        return -0.5 * jnp.sum(((smf - target) / (0.05 * target)) ** 2)

    nsamples = 300
    run = lambda n: model.run_nuts(truth, n, nwarmup=200, randkey=1, progress=False,  # noqa: E731
                                   dense_mass_matrix=True)
    run(nsamples)
    result, seconds = timed(lambda: run(nsamples))
    # The warm-up alone (same key: the same 200 transitions), to count the draws' time only;
    # called once untimed, since another nsamples compiles the diagnostics anew.
    run(1)
    warm, warm_seconds = timed(lambda: run(1))
    seconds -= warm_seconds
    leapfrogs = float(result.info.num_integration_steps[0]) * nsamples
    # The bare kernel with run_nuts's adapted step size and its mass matrix: the
    # draws' covariance, which is what the warm-up estimates.
    imm = jnp.cov(jnp.asarray(result.samples[0]).T)
    kernel = blackjax.mcmc.nuts.build_kernel()

    # The data are arguments of the jitted loop, as they are of run_nuts's
    # (closed over, XLA would fold them into the program as constants).
    @jax.jit
    def bare(key, position, step_size, data):
        logdensity = functools.partial(plain, data=data)

        def body(state, key):
            state, info = kernel(key, state, logdensity, step_size, imm)
            return state, info.num_integration_steps

        return jax.lax.scan(body, blackjax.mcmc.hmc.init(position, logdensity), jax.random.split(key, nsamples))

    data = (edges, log_mh, target)
    bare(jax.random.key(0), truth, warm.info.step_size[0], data)
    (_, steps), bare_seconds = timed(lambda: bare(jax.random.key(1), truth, warm.info.step_size[0], data))
    bare_leapfrogs = float(np.sum(steps))
    ours_per, bare_per = seconds / leapfrogs, bare_seconds / bare_leapfrogs
    print(f"leapfrog step, SMF 100,000 halos: run_nuts {1e3 * ours_per:.3f} ms ({leapfrogs:.0f} steps in "
          f"{seconds:.2f} s, the warm-up's time taken out), bare blackjax {1e3 * bare_per:.3f} ms "
          f"({bare_leapfrogs:.0f} steps, {bare_seconds:.2f} s)")
    print(f"RATIO bare blackjax / run_nuts time per leapfrog step = {bare_per / ours_per:.2f}   (target >= 0.9)")
    # The floor of a leapfrog step: one jitted value_and_grad of the plain
    # log-density, called in a lax.scan (no sampler at all).
    @jax.jit
    def gradients(position, data):
        def body(p, _):
            value, grad = jax.value_and_grad(plain)(p, data)
            return p + 1e-12 * grad, value

        return jax.lax.scan(body, position, length=100)

    gradients(truth, data)
    _, floor_seconds = timed(lambda: gradients(truth, data))
    print(f"one value_and_grad of the plain log-density (in a lax.scan): {10 * floor_seconds:.3f} ms")
    print(f"RATIO value_and_grad / run_nuts time per leapfrog step = {floor_seconds / 100 / ours_per:.2f}")


def scaling_worker(nsamples=20, nwarmup=20):
    from mpi4py import MPI

    model, truth, _, _ = smf_posterior(1_000_000)
    # Short, with trees of at most 32 steps: a step costs about 0.2 s on one
    # thread, and a warm-up this short leaves some trees at their limit.
    run = lambda key, n, nwarmup: model.run_nuts(truth, n, nwarmup=nwarmup, randkey=key,  # noqa: E731
                                                 progress=False, dense_mass_matrix=True,
                                                 max_num_doublings=5)
    run(0, 1, 1)  # compiles the sampler; other lengths reuse it
    MPI.COMM_WORLD.Barrier()
    result, seconds = timed(lambda: run(1, nsamples, nwarmup))
    if MPI.COMM_WORLD.rank == 0:
        steps = float(result.info.num_integration_steps[0])
        print(f"DRAWS_PER_SECOND {(nsamples + nwarmup) / seconds:.3f} LEAPFROGS {steps:.2f}")


def scaling():
    sys.path.insert(0, str(HERE.parent / "scripts"))
    from mpi_launcher import environment_bin, launcher

    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               PATH=environment_bin() + os.pathsep + os.environ.get("PATH", ""))
    rates = {}
    for n in (1, 2):
        out = subprocess.run([*launcher(env), "-n", str(n), "--bind-to", "core", sys.executable, __file__,
                              "--worker"], env=env, capture_output=True, text=True, check=True).stdout
        words = out.split("DRAWS_PER_SECOND")[1].split()
        rates[n] = float(words[0])
        print(f"{n} rank(s), 1,000,000 halos, one XLA thread per rank: {rates[n]:.2f} transitions/s "
              f"({words[2]} leapfrog steps each)")
    print(f"RATIO 2 ranks / 1 rank = {rates[2] / rates[1]:.2f}   (target >= 1.8)")


if __name__ == "__main__":
    if "--worker" in sys.argv:
        scaling_worker()
    elif "--scaling" in sys.argv:
        scaling()
    else:
        logdensity, guess = correlated_gaussian()
        ess_ratio("10-parameter correlated Gaussian", logdensity, guess, 2000, 20_000,
                  nwarmup=1000, dense_mass_matrix=True)
        model, truth, _, _ = smf_posterior()
        ess_ratio("seed SMF posterior (2 parameters)", jax.jit(lambda p: -model.calc_loss_from_params(p)),
                  truth, 2000, 10_000, nwarmup=500, dense_mass_matrix=True)
        per_leapfrog_ratio()
