"""Where a kdescent call's device time goes, kernel by kernel, under each block policy.

    python benchmarks/profile_kdescent.py [--npoints 10000000] [--calls 5] [--out DIR]

The kde + Fourier ``value_and_grad`` of ``bench_kdescent.py`` (3-D, 30 + 30
kernels), compiled ahead of time under each variant of this machine's
accelerator block policy (without an accelerator: an 80 GB GPU's policy,
forced onto the CPU). For each variant it prints the compile time,
the scratch memory XLA planned (``temp_size_in_bytes``), the median of 10
calls, and, from a ``jax.profiler`` trace of ``--calls`` calls, the device's
busiest kernels per call. With ``--out``, the optimised HLO of each variant
and the traces are kept there, to match kernel names with fusions.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_kdescent as bk
from bench_gpu import _median_time

from diffopt.kdescent import _kernels

_ONE_BLOCK = 2**62


def variants() -> dict[str, _kernels.BlockPolicy]:
    accel = _kernels._accelerator_policy() or _kernels.block_policy("cuda", int(0.75 * 80e9))
    return {
        "accelerator default": accel,
        "no cotangent barrier": accel._replace(separate_point_cotangents=False),
        "one block": accel._replace(block_elements=_ONE_BLOCK),
        "one block, no cotangent barrier": accel._replace(block_elements=_ONE_BLOCK, separate_point_cotangents=False),
    }


def device_kernels(trace_dir: Path) -> tuple[collections.Counter, collections.Counter, list[str]]:
    """Total time (µs) and count of each kernel on the device lines of the trace."""
    files = sorted(trace_dir.glob("plugins/profile/*/*.trace.json.gz"))
    with gzip.open(files[-1]) as trace:
        events = json.load(trace)["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in names.items() if "/device:" in name}
    times, counts = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device:
            times[e["name"]] += float(e.get("dur", 0.0))
            counts[e["name"]] += 1
    return times, counts, sorted(names.values())


def print_busiest_kernels(call, calls: int, top: int, trace_dir: Path) -> None:
    """Profile ``calls`` calls of ``call()``; print the device time per call and its ``top`` kernels."""
    try:
        with jax.profiler.trace(str(trace_dir)):
            for _ in range(calls):
                jax.block_until_ready(call())
        kernel_us, counts, lines = device_kernels(trace_dir)
    except Exception as err:  # noqa: BLE001 (a profiler that cannot start here: keep the timings)
        print(f"   no profile: {type(err).__name__}: {str(err)[:200]}")
        return
    busy = sum(kernel_us.values()) / calls
    print(f"   device kernels {busy / 1e3:.2f} ms per call, {sum(counts.values()) / calls:.0f} launches")
    if not kernel_us:
        print(f"   no device lines in the trace (lines: {', '.join(lines)})")
    for kernel, us in kernel_us.most_common(top):
        print(f"   {us / calls:9.1f} µs  x{counts[kernel] / calls:<4.0f} {kernel[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npoints", type=int, default=10_000_000)
    parser.add_argument("--calls", type=int, default=5, help="calls profiled per variant")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per variant")
    parser.add_argument("--only", default="", help="comma-separated variant numbers (from 1)")
    parser.add_argument("--out", default=None, help="folder for the optimised HLO and the traces")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(3)))  # device start-up, not counted
    kcalc = bk.make_kcalc()
    call_args = (jnp.array([0.5, -1.0, 2.0, 1.0, 0.9, 1.2]), bk.points(args.npoints), jax.random.key(3))
    print(f"N = {args.npoints:,d} on {jax.devices()[0].device_kind}, jax {jax.__version__}")
    only = {int(i) for i in args.only.split(",") if i}
    for number, (name, policy) in enumerate(variants().items(), start=1):
        if only and number not in only:
            continue
        t0 = time.perf_counter()
        with _kernels._force_policy(policy):
            compiled = bk.fused_loss(kcalc).lower(*call_args).compile()
        compile_s = time.perf_counter() - t0
        temp = compiled.memory_analysis().temp_size_in_bytes
        (out / f"variant{number}.hlo.txt").write_text(compiled.as_text())
        value = float(jax.block_until_ready(compiled(*call_args))[0])
        call = functools.partial(compiled, *call_args)
        per_call = _median_time(call, 10)
        print(f"\n{number}. {name}: {policy}\n   trace + compile {compile_s:.2f} s, temp "
              f"{temp / 2**30:.2f} GiB, per call {per_call * 1e3:.2f} ms (median of 10), loss {value:.6g}")
        print_busiest_kernels(call, args.calls, args.top, out / f"trace{number}")


if __name__ == "__main__":
    main()
