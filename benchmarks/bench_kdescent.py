"""Speed and memory of kdescent's fused kernel/ECF sums against a naive dense version.

The call measured is ``jax.value_and_grad`` with respect to parameters that
shift and scale the points (``x = mu + s * z``) of a scalar built from
``compare_kde_counts`` and ``compare_fourier_counts`` (3-D data, default
numbers of kernels: 30 of each per call). The naive reference evaluates the
same kernels with a vmapped ``jax.scipy.stats.multivariate_normal.pdf`` over
the kernel centres and the same ECF with a dense ``N x K`` complex
exponential. Each figure is measured within one run (timings interleaved,
best of ``--repeats``), ``--runs`` times; the median and the spread (min,
max) of the runs are printed:

    python benchmarks/bench_kdescent.py [--runs 5] [--repeats 5] [--npoints 2000000] [--memory-npoints 10000000]

1. points per second, fused vs naive, at ``--npoints`` (target: >= 5x);
2. peak resident memory (VmHWM) of a process that makes the points and runs
   the fused call at ``--memory-npoints``, measured in a fresh subprocess (target: < 1.5 GB; naive is not run there: its dense
   N x K arrays alone would need > 10 GB);
3. ``kdescent.adam`` steps per second on the tutorial's 5-parameter fit
   against bare calls of the jitted ``value_and_grad`` (target: >= 0.7x).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffopt import kdescent

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _runs import summary  # noqa: E402

NDIM = 3


def make_kcalc(seed: int = 0) -> kdescent.KCalc:
    rng = np.random.default_rng(seed)
    train = rng.multivariate_normal([0.5, -1.0, 2.0], [[1.0, 0.3, 0.0], [0.3, 0.8, 0.2], [0.0, 0.2, 1.5]],
                                    size=20_000).astype(np.float32)
    return kdescent.KCalc(kdescent.KPretrainer.from_training_data(train, seed=seed))


def points(n: int, seed: int = 1) -> jax.Array:
    # float32 straight from NumPy: no float64 or random-bit temporaries.
    z = np.random.default_rng(seed).standard_normal((n, NDIM), dtype=np.float32)
    out = jnp.asarray(z)
    del z
    return out


def fused_loss(kcalc: kdescent.KCalc):
    def loss(params, z, key):
        x = params[:NDIM] + params[NDIM:] * z
        k1, k2 = jax.random.split(key)
        mk, tk = kcalc.compare_kde_counts(k1, x)
        mf, tf = kcalc.compare_fourier_counts(k2, x)
        return jnp.sum((mk - tk) ** 2) + jnp.sum(jnp.abs(mf - tf) ** 2)

    return jax.jit(jax.value_and_grad(loss))


def naive_loss(kcalc: kdescent.KCalc):
    pre = kcalc.pretrainer

    def loss(params, z, key):
        x = params[:NDIM] + params[NDIM:] * z
        k1, k2 = jax.random.split(key)
        kinds = kcalc.realize_kernel_inds(k1)
        finds = kcalc.realize_fourier_inds(k2)
        pdf = jax.vmap(jax.scipy.stats.multivariate_normal.pdf, in_axes=(None, 0, None))(
            x, pre.kernel_centers[kinds], pre.kernel_cov)
        mk = pdf.sum(axis=1)
        mf = jnp.exp(1j * (x @ pre.fourier_positions[finds].T)).sum(axis=0)
        return jnp.sum((mk - pre.kde_counts[kinds]) ** 2) + jnp.sum(jnp.abs(mf - pre.fourier_counts[finds]) ** 2)

    return jax.jit(jax.value_and_grad(loss))


def best_times(fns: dict, args, repeats: int) -> dict:
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def speed(npoints: int, repeats: int) -> float:
    """One run: the speed-up of the fused sums over the naive ones."""
    kcalc = make_kcalc()
    z = points(npoints)
    params = jnp.array([0.5, -1.0, 2.0, 1.0, 0.9, 1.2])
    args = (params, z, jax.random.key(3))
    fused, naive = fused_loss(kcalc), naive_loss(kcalc)
    (vf, gf), (vn, gn) = fused(*args), naive(*args)
    # Same quantity (float32 round-off apart).
    np.testing.assert_allclose(float(vf), float(vn), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(gf), np.asarray(gn), rtol=2e-3, atol=1e-3 * float(jnp.abs(gn).max()))
    t = best_times({"fused": fused, "naive": naive}, args, repeats)
    print(f"  value_and_grad, N = {npoints:,} points in {NDIM}-D, {kcalc.num_eval_kernels} kernels + "
          f"{kcalc.num_eval_fourier_positions} Fourier positions: "
          + ", ".join(f"{name} {t[name]:.3f} s ({npoints / t[name] / 1e6:.2f} M points/s)"
                      for name in ("fused", "naive")))
    return t["naive"] / t["fused"]


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image. (ru_maxrss would not do: Linux
    # carries it over from the parent across fork + exec.)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(npoints: int) -> None:
    kcalc = make_kcalc()
    fn = fused_loss(kcalc)
    z = points(npoints)
    params = jnp.array([0.5, -1.0, 2.0, 1.0, 0.9, 1.2])
    jax.block_until_ready(fn(params, z, jax.random.key(3)))  # compile and run once
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, z, jax.random.key(4)))
    elapsed = time.perf_counter() - t0
    print(json.dumps({"peak_mb": _peak_rss_mb(), "seconds": elapsed}))


def memory(npoints: int) -> float:
    """One run, in a fresh process: its peak resident memory in MB."""
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(npoints)], capture_output=True,
                         text=True, check=True, env=dict(os.environ))
    res = json.loads(out.stdout.strip().splitlines()[-1])
    inputs = npoints * NDIM * 4 / 2**20
    print(f"  value_and_grad, N = {npoints:,} points (fresh process; the points alone are {inputs:.0f} MB): "
          f"peak resident memory {res['peak_mb']:.0f} MB, {res['seconds']:.2f} s per call; a dense N x K "
          f"float32 array would be {npoints * 30 * 4 / 2**20:.0f} MB")
    return res["peak_mb"]


def adam_speed(nsteps: int = 100) -> float:
    """One run: kdescent.adam steps/s over bare jitted value_and_grad calls/s."""
    import functools

    data_nsample, model_nsample = 10_000, 5_000

    @functools.partial(jax.jit, static_argnames=["nsample"])
    def generate_data(params, randkey, nsample=model_nsample):
        mean = params[:2]
        cov11, cov22 = jnp.abs(params[2:4])
        cov12 = params[4] * jnp.sqrt(cov11 * cov22)
        cov = jnp.array([[cov11, cov12], [cov12, cov22]])
        return jax.random.multivariate_normal(randkey, mean, cov, shape=(nsample,))

    truth = jnp.array([1.6, 2.9, 0.8, 1.25, -0.2])
    training_x = generate_data(truth, jax.random.key(42), nsample=data_nsample)
    kde = kdescent.KCalc(kdescent.KPretrainer.from_training_data(training_x, num_eval_kernels=20))

    def lossfunc(params, randkey):
        key1, key2 = jax.random.split(randkey)
        model_x = generate_data(params, randkey=key1)
        mk, tk = kde.compare_kde_counts(key2, model_x)
        return jnp.mean((mk / model_nsample - tk / data_nsample) ** 2)

    guess = jnp.array([0.0, 0.0, 1.0, 1.0, 0.0])
    bounds = jnp.array([[-jnp.inf, jnp.inf]] * 2 + [[0.001, jnp.inf]] * 2 + [[-0.999, 0.999]])
    vg = jax.jit(jax.value_and_grad(lossfunc))
    keys = jax.random.split(jax.random.key(0), nsteps)

    def bare():
        for k in keys:
            out = vg(guess, k)
        jax.block_until_ready(out)

    def fit():
        kdescent.adam(lossfunc, guess, nsteps=nsteps, param_bounds=bounds, learning_rate=1.0, randkey=1,
                      progress=False)

    bare()
    fit()  # compile and warm up
    t_bare, t_fit = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fit()
        t_fit.append(time.perf_counter() - t0)
    sb, sf = nsteps / min(t_bare), nsteps / min(t_fit)
    print(f"  kdescent.adam on the tutorial's 5-parameter fit ({nsteps} steps): bare jitted value_and_grad "
          f"{sb:.1f} calls/s, kdescent.adam {sf:.1f} steps/s")
    return sf / sb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each figure")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats within a run (best is kept)")
    parser.add_argument("--npoints", type=int, default=2_000_000)
    parser.add_argument("--memory-npoints", type=int, default=10_000_000)
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        _memory_child(args.memory_child)
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPU(s)")
    speedups = [speed(args.npoints, args.repeats) for _ in range(args.runs)]
    print(f"FIGURE speed-up fused / naive, N = {args.npoints:,}: {summary(speedups, '{:.1f}')}   (target >= 5)")
    peaks = [memory(args.memory_npoints) for _ in range(args.runs)]
    print(f"FIGURE peak resident memory (MB), N = {args.memory_npoints:,}: {summary(peaks, '{:.0f}')}   "
          "(target < 1536)")
    ratios = [adam_speed() for _ in range(args.runs)]
    print(f"FIGURE kdescent.adam steps/s / bare calls/s: {summary(ratios)}   (target >= 0.7)")


if __name__ == "__main__":
    main()
