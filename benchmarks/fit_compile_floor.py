"""What a fit's compiled loop adds to the compile of a bare ``value_and_grad``.

    python benchmarks/fit_compile_floor.py [--problem quickstart|advanced] [--rounds 4]

Issue 15 asks a fit's first call to take at most 1.5 x (compile of a bare
jitted ``value_and_grad`` + nsteps x one call). This script compiles, in one
process and interleaved over a few rounds (a new constant each round, so that
no cache answers), the tutorial loss's

1. bare jitted ``value_and_grad``;
2. ``lax.while_loop`` around it, taking ``optax.sgd`` steps;
3. the same loop taking ``optax.adam`` steps;
4. ``kdescent.adam``'s compiled loop without bounds, and
5. with the tutorial's bounds;

and prints the median XLA compile time of each, and what each adds to (1).
Then, each in a fresh process, it times the first calls of (1) and (3), and
prints issue 15's ratio for (3): its first call ÷ (bare compile + 40 x call).
(3) is about the least any compiled adam loop around this loss compiles; the
difference between (3) and (5) is diffopt's own machinery (bounds, the
non-finite stop, records). Last, from an XLA dump in a fresh process, it
counts the kernels (fusions, each compiled on its own) of (1), (3) and (5):
XLA's CPU compile time grows with their number. Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import _median_time, _timed, _tutorial_problem  # noqa: E402

from diffopt import kdescent  # noqa: E402


def _compile_seconds(fn, *args) -> float:
    return _timed(jax.jit(fn).lower(*args).compile)[0]


def _loop(value_and_grad, opt: optax.GradientTransformation):
    """``loop(p, key)``: 40 steps of ``opt`` in a ``lax.while_loop``, a new key each step."""

    def loop(p, key):
        def body(carry):
            t, p, state = carry
            _, g = value_and_grad(p, jax.random.fold_in(key, t))
            updates, state = opt.update(g, state, p)
            return t + 1, optax.apply_updates(p, updates), state

        return jax.lax.while_loop(lambda c: c[0] < 40, body, (0, p, opt.init(p)))

    return loop


def _fit_loop_seconds(ns, extra: float, bounds) -> float:
    """The longest XLA compile of a 1-step ``kdescent.adam``: its loop's."""
    seconds = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seconds.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        kdescent.adam(ns["lossfunc"], ns["guess"], nsteps=1, param_bounds=bounds,
                      learning_rate=0.01 + extra, randkey=1, progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return max(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="quickstart", choices=("quickstart", "advanced"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--child", choices=("bare", "adam loop", "kernels"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    ns = _tutorial_problem(args.problem)
    guess, key = ns["guess"], jax.random.key(0)
    value_and_grad = jax.value_and_grad(ns["lossfunc"])
    if args.child == "kernels":  # compile (1), (3) and (5), for _kernel_counts' XLA dump
        jax.block_until_ready(jax.jit(value_and_grad)(guess, key))
        jax.block_until_ready(jax.jit(_loop(value_and_grad, optax.adam(0.01)))(guess, key))
        _fit_loop_seconds(ns, 0.0, ns["bounds"])
        return
    if args.child:
        _first_call(value_and_grad if args.child == "bare" else _loop(value_and_grad, optax.adam(0.01)), guess, key)
        return
    cases = {
        "bare value_and_grad": lambda e: _compile_seconds(
            lambda p, k: value_and_grad(p * (1 + e), k), guess, key),
        "while_loop, optax.sgd steps": lambda e: _compile_seconds(_loop(value_and_grad, optax.sgd(0.01 + e)), guess, key),
        "while_loop, optax.adam steps": lambda e: _compile_seconds(_loop(value_and_grad, optax.adam(0.01 + e)), guess, key),
        "kdescent.adam loop, no bounds": lambda e: _fit_loop_seconds(ns, e, None),
        "kdescent.adam loop, bounds": lambda e: _fit_loop_seconds(ns, e, ns["bounds"]),
    }
    seconds = {name: [] for name in cases}
    for r in range(args.rounds):
        for i, (name, case) in enumerate(cases.items()):
            seconds[name].append(case(1e-9 * (1 + r * len(cases) + i)))
    base = np.median(seconds["bare value_and_grad"])
    print(f"XLA compile, {args.problem} tutorial loss, median of {args.rounds} ({jax.devices()[0].device_kind}):")
    for name, values in seconds.items():
        median = np.median(values)
        print(f"  {name:32s} {median:.3f} s  (+{median - base:.3f} s)   [{' '.join(f'{v:.3f}' for v in values)}]")
    # The ratio of issue 15 for the least compiled adam loop, each first call in a fresh process.
    ratios = []
    for _ in range(args.rounds):
        bare, loop = (_child(args.problem, child) for child in ("bare", "adam loop"))
        ratios.append(loop[0] / (bare[0] - bare[1] + 40 * bare[1]))
    print(f"  first call of the 40-step adam while_loop / (bare compile + 40 x call), fresh processes: "
          f"median {np.median(ratios):.2f}   [{' '.join(f'{r:.2f}' for r in ratios)}]")
    kernels = _kernel_counts(args.problem)
    print("  kernels (fusions XLA compiles one by one; fresh process, XLA dump):")
    for name in ("bare value_and_grad", "while_loop, optax.adam steps", "kdescent.adam loop, bounds"):
        total, outside = kernels[name]
        print(f"    {name:32s} {total:4d}, {1e3 * np.median(seconds[name]) / total:.1f} ms of compile each"
              + (f"; {outside} outside the loop (computed once per call)" if name != "bare value_and_grad" else ""))


# An instruction of an optimised HLO module that is a fusion: one kernel.
_FUSION = re.compile(r"^\s*\S+ = .* fusion\(", re.MULTILINE)


def _kernel_counts(problem: str) -> dict[str, tuple[int, int]]:
    """``(kernels, kernels outside the loop)`` of programs (1), (3) and (5), from an XLA dump."""
    with tempfile.TemporaryDirectory() as dump:
        flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text"
        subprocess.run([sys.executable, __file__, "--problem", problem, "--child", "kernels"],
                       env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True, check=True)
        counts = {}
        for program, module in (("bare value_and_grad", "jit_lossfunc"), ("while_loop, optax.adam steps", "jit_loop"),
                                ("kdescent.adam loop, bounds", "jit__run_steps")):
            (path,) = Path(dump).glob(f"*.{module}.*after_optimizations.txt")
            text = path.read_text()
            entry = text[text.index("\nENTRY"):]
            entry = entry[: entry.index("\n}")]
            counts[program] = (len(_FUSION.findall(text)), len(_FUSION.findall(entry)))
    return counts


def _first_call(fn, *args) -> None:
    """Print ``[first call, median later call]`` of ``jax.jit(fn)``, in seconds, as JSON."""
    jitted = jax.jit(fn)
    first, _ = _timed(lambda: jitted(*args))
    print(json.dumps([first, _median_time(lambda: jitted(*args), 10)]))


def _child(problem: str, child: str) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--problem", problem, "--child", child],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
