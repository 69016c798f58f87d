"""Where a kdescent call's first call goes: trace, lower, compile, first run.

    python benchmarks/compile_split.py [--npoints 10000000] [--one-block] [--no-barrier]

The kde + Fourier ``value_and_grad`` of ``bench_kdescent.py`` (3-D, 30 + 30
kernels), in this fresh process, split with JAX's ahead-of-time stages, then
the median of 5 later calls. Run it under different ``XLA_FLAGS`` (for
example ``--xla_gpu_autotune_level=0``) to see what a compiler pass costs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kdescent as bk

from diffopt import kdescent
from diffopt.kdescent import _kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npoints", type=int, default=10_000_000)
    parser.add_argument("--one-block", action="store_true", help="chunk_size = N")
    parser.add_argument("--no-barrier", action="store_true",
                        help="this machine's policy without separate_point_cotangents")
    args = parser.parse_args()
    n = args.npoints
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(3)))  # device start-up, not counted
    kcalc = bk.make_kcalc()
    if args.one_block:
        kcalc = kdescent.KCalc(kcalc.pretrainer, chunk_size=n)
    call_args = (jnp.array([0.5, -1.0, 2.0, 1.0, 0.9, 1.2]), bk.points(n), jax.random.key(3))
    fn = bk.fused_loss(kcalc)
    policy = _kernels._accelerator_policy() or _kernels.block_policy("cpu")
    forced = (_kernels._force_policy(policy._replace(separate_point_cotangents=False)) if args.no_barrier
              else contextlib.nullcontext())
    times = [time.perf_counter()]
    with forced:
        traced = fn.trace(*call_args)
    times.append(time.perf_counter())
    lowered = traced.lower()
    times.append(time.perf_counter())
    compiled = lowered.compile()
    times.append(time.perf_counter())
    jax.block_until_ready(compiled(*call_args))
    times.append(time.perf_counter())
    later = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*call_args))
        later.append(time.perf_counter() - t0)
    trace, lower, compile_, run = np.diff(times)
    barrier = " (no cotangent barrier)" if args.no_barrier else ""
    print(f"N = {n:,d}{' (one block)' if args.one_block else ''}{barrier} on {jax.devices()[0].device_kind}: "
          f"trace {trace:.2f} s, lower {lower:.2f} s, compile {compile_:.2f} s, first run {run:.3f} s, "
          f"later calls {np.median(later) * 1e3:.2f} ms; {lowered.as_text().count(chr(10))} lines of StableHLO")


if __name__ == "__main__":
    main()
