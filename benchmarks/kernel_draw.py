"""What KCalc's kernel draw costs, and what a top-k draw would save.

    python benchmarks/kernel_draw.py [--npoints 1000000] [--repeats 20]

Every ``compare_kde_counts`` / ``compare_fourier_counts`` call draws its
kernels (or Fourier positions) afresh with ``jax.random.choice(...,
replace=False)``, which shuffles all the pretrained ones with two sorts. The
``k`` largest of ``n`` random keys is also a uniform draw without replacement
(up to ties of 30-bit keys, about ``n / 2**30`` per draw), with one top-k.
In one process this prints, for both draws:

1. the draw alone, jitted, at the default sizes of 2-D and 3-D data
   (``k = 10 * ndim`` of ``300 * k``);
2. the jitted ``value_and_grad`` of the kdescent tutorials' losses
   (5-parameter quickstart, 20-parameter advanced) and of
   ``bench_kdescent.py``'s kde + Fourier loss at ``--npoints``;

each per call and compile, with the ratio ``jax.random.choice`` ÷ top-k.

KCalc keeps ``jax.random.choice``: the draws differ, so every fit's random
stream would change, and the quickstart tutorial's fit with its key 12345
would then be among the 6.7% of keys whose fit does not recover the truth
(280 of 300 keys recover with either draw). The branch
``wip/topk-kernel-draw`` holds the change with its uniformity test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_kdescent as bk  # noqa: E402
from bench_gpu import _median_time, _timed, _tutorial_problem  # noqa: E402

from diffopt import kdescent  # noqa: E402
from diffopt._keys import as_key  # noqa: E402


def choice_draw(key, n: int, k: int):
    return jax.random.choice(key, n, (k,), replace=False)


def top_k_draw(key, n: int, k: int):
    # 30 random bits as positive normal float32 numbers order like the
    # integers, and float32 has XLA's fast top-k.
    bits = jax.random.bits(key, (n,), jnp.uint32)
    return jax.lax.top_k(jax.lax.bitcast_convert_type((bits >> 2) + jnp.uint32(0x00800000), jnp.float32), k)[1]


DRAWS = {"jax.random.choice": choice_draw, "top-k": top_k_draw}


def _with_draw(draw):
    """Point KCalc's two draws at ``draw``; returns a function that undoes it."""
    saved = kdescent.KCalc.realize_kernel_inds, kdescent.KCalc.realize_fourier_inds
    kdescent.KCalc.realize_kernel_inds = lambda self, key: draw(
        as_key(key), self.num_pretrain_kernels, self.num_eval_kernels)
    kdescent.KCalc.realize_fourier_inds = lambda self, key: draw(
        as_key(key), self.num_pretrain_fourier_positions, self.num_eval_fourier_positions)
    jax.clear_caches()  # jitted functions of the tutorials are traced again, with this draw

    def undo():
        kdescent.KCalc.realize_kernel_inds, kdescent.KCalc.realize_fourier_inds = saved

    return undo


def _compile_and_call(fn, args, repeats: int) -> tuple[float, float]:
    compile_s, compiled = _timed(jax.jit(fn).lower(*args).compile)
    jax.block_until_ready(compiled(*args))
    return compile_s, _median_time(lambda: compiled(*args), repeats)


def _row(label: str, figures: dict) -> None:
    (c_ref, t_ref), (c_ours, t_ours) = figures["jax.random.choice"], figures["top-k"]
    print(f"  {label:40s} per call {t_ref * 1e3:8.3f} ms vs {t_ours * 1e3:8.3f} ms ({t_ref / t_ours:5.2f}x); "
          f"compile {c_ref:.2f} s vs {c_ours:.2f} s ({c_ref / c_ours:.2f}x)")


def _loss_row(label: str, fn, args, repeats: int) -> None:
    figures = {}
    for name, draw in DRAWS.items():
        undo = _with_draw(draw)
        try:
            figures[name] = _compile_and_call(fn, args, repeats)
        finally:
            undo()
    _row(label, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npoints", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"kernel draws, jax.random.choice vs top-k, on {jax.devices()[0].device_kind}:")
    key = jax.random.key(0)
    for ndim in (2, 3):
        k = 10 * ndim
        figures = {name: _compile_and_call(lambda key, d=draw, k=k: d(key, 300 * k, k), (key,), args.repeats)
                   for name, draw in DRAWS.items()}
        _row(f"draw {k} of {300 * k}", figures)
    loss_repeats = max(5, args.repeats // 4)
    for problem in ("quickstart", "advanced"):
        ns = _tutorial_problem(problem)
        _loss_row(f"{problem} tutorial value_and_grad", jax.value_and_grad(ns["lossfunc"]),
                  (ns["guess"], key), loss_repeats)
    kcalc = bk.make_kcalc()
    _loss_row(f"kde + Fourier, N = {args.npoints:.0e}", bk.fused_loss(kcalc).__wrapped__,
              (jnp.array([0.5, -1.0, 2.0, 1.0, 0.9, 1.2]), bk.points(args.npoints), jax.random.key(3)),
              loss_repeats)


if __name__ == "__main__":
    main()
