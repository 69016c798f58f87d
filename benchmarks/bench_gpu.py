"""GPU figures of issue 15, side by side in one run (under 5 minutes on an H100/H200).

    python benchmarks/bench_gpu.py [--reference PATH]                       # GPU sizes
    python benchmarks/bench_gpu.py --npoints 20000,100000 --halos 100000 \\
        --fit-steps 40,25 --repeats 3                                       # a quick run on CPU

1. kdescent ``value_and_grad`` of kde + Fourier comparisons (3-D data, default
   numbers of kernels: 30 + 30) at each ``--npoints``: ours with the default
   blocks, ours as one block (``chunk_size=N``), a few variants of the
   accelerator block policy (only when running on an accelerator), and a
   naive dense reference. First call (trace + compile + run) and the median
   of ``--repeats`` later calls, points/s, and the naive/ours ratio.
2. The seed SMF model (examples/smf_grad_descent.py) with ``--halos`` halos:
   BFGS and ``run_adam`` first call (in a fresh process: compilation included)
   and steady state, next to a bare ``jax.jit(jax.value_and_grad(loss))``
   (first call and one call), and the ratio first call / (bare compile +
   evaluations x one call).
3. The 20-parameter kdescent fit of the tutorial (examples/kdescent_advanced.py:
   3 KCalcs, 20,000 model points), and (3b) the quickstart's 5-parameter fit:
   ``kdescent.adam`` first call (fresh process) divided by (compile time of
   the bare jitted ``value_and_grad`` + nsteps x one call), then a second call
   with another ``nsteps`` against its steady state.
4. With ``--reference PATH``: the released diffopt 2.0.0's BFGS on the seed SMF,
   first call and steady state, in a fresh process with ``PYTHONPATH=PATH``
   (PATH: the unzipped release wheel, e.g. from ``pip download diffopt==2.0.0
   --no-deps``; never committed).

Cold figures come from fresh subprocesses, so that no earlier compilation or
trace is reused. No persistent compilation cache is used.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


# --- helpers ------------------------------------------------------------------------


def _timed(fn):
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def _median_time(fn, repeats):
    import numpy as np

    return float(np.median([_timed(fn)[0] for _ in range(repeats)]))


def _child(mode: str, args: argparse.Namespace, env: dict | None = None) -> dict:
    """Run ``mode`` of this script in a fresh interpreter; return its JSON line."""
    cmd = [sys.executable, __file__, "--child", mode, "--halos", str(args.halos),
           "--fit-steps", args.fit_steps, "--repeats", str(args.repeats),
           "--kd-problem", getattr(args, "kd_problem", "advanced")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or dict(os.environ), cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.device_kind} ({d.platform}), jax {jax.__version__}, {len(jax.devices())} device(s)"


# --- 1. kde + Fourier value_and_grad ------------------------------------------------


def kernels_section(npoints_list, repeats):
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    import bench_kdescent as bk

    from diffopt import kdescent
    from diffopt.kdescent import _kernels

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(3)))  # device start-up, not counted
    kcalc = bk.make_kcalc()
    accel = _kernels._accelerator_policy()
    policy = accel or _kernels.block_policy("cpu")
    variants = {}
    if accel is not None:
        variants = {
            "matmul tangents": accel._replace(matmul_tangents=True),
            "no remat of 1 block": accel._replace(remat_one_block=False),
            "poly sin/cos": accel._replace(fast_sincos=True),
            "no cotangent barrier": accel._replace(separate_point_cotangents=False),
        }
    print(f"1. kde + Fourier value_and_grad, 3-D, {kcalc.num_eval_kernels} kernels + "
          f"{kcalc.num_eval_fourier_positions} Fourier positions (padded to 32 each), "
          f"median of {repeats} calls after the first")
    print(f"   default block policy here: {policy}")
    header = f"   {'N':>10s}  {'variant':22s} {'blocks':>6s} {'first call':>11s} {'per call':>10s} " \
             f"{'G points/s':>10s} {'naive/this':>10s}"
    print(header)
    results = {}
    for n in npoints_list:
        z = bk.points(n)
        params = jnp.array([0.5, -1.0, 2.0, 1.0, 0.9, 1.2])
        args = (params, z, jax.random.key(3))
        chunk = _kernels.default_chunk_size(32, policy)
        rows = [("ours, default", bk.fused_loss(kcalc), None, _kernels._chunking(n, chunk)[0]),
                ("ours, one block", bk.fused_loss(kdescent.KCalc(kcalc.pretrainer, chunk_size=n)), None, 1)]
        for name, pol in variants.items():
            rows.append((name, bk.fused_loss(kcalc), pol,
                         _kernels._chunking(n, _kernels.default_chunk_size(32, pol))[0]))
        rows.append(("naive dense", bk.naive_loss(kcalc), None, 1))
        timings = {}
        for name, fn, pol, nblocks in rows:
            def call(fn=fn, pol=pol, args=args):
                if pol is None:
                    return fn(*args)
                with _kernels._force_policy(pol):
                    return fn(*args)

            try:
                first, out = _timed(call)
                per_call = _median_time(call, repeats)
            except Exception as err:  # e.g. the naive version out of memory
                print(f"   {n:>10,d}  {name:22s} failed: {type(err).__name__}: {str(err)[:80]}")
                continue
            timings[name] = (first, per_call, nblocks, out)
        naive = timings.get("naive dense")
        ref_value = None if naive is None else float(naive[3][0])
        for name, (first, per_call, nblocks, out) in timings.items():
            ratio = "" if naive is None else f"{naive[1] / per_call:10.1f}"
            if ref_value is not None and name != "naive dense":
                assert abs(float(out[0]) - ref_value) <= 1e-3 * abs(ref_value), (name, float(out[0]), ref_value)
            print(f"   {n:>10,d}  {name:22s} {nblocks:6d} {first:10.2f}s {per_call * 1e3:8.2f}ms "
                  f"{n / per_call / 1e9:10.3f} {ratio:>10s}")
        results[n] = {k: v[:3] for k, v in timings.items()}
    return results


# --- 2. seed SMF ---------------------------------------------------------------------


def _smf_model(num_halos):
    sys.path.insert(0, str(HERE))
    from bench_multigrad import build

    return build(num_halos)


def child_smf_bare(args):
    import jax

    model, guess = _smf_model(args.halos)
    bare = jax.jit(jax.value_and_grad(model.calc_loss_from_params))
    first, _ = _timed(lambda: bare(guess))
    per_call = _median_time(lambda: bare(guess), max(args.repeats, 20))
    return {"first": first, "per_call": per_call}


def child_smf_bfgs(args):
    model, guess = _smf_model(args.halos)
    first, out = _timed(lambda: model.run_bfgs(guess, progress=False))
    steady, _ = _timed(lambda: model.run_bfgs(guess, progress=False))
    res = out[-1]
    import diffopt

    return {"first": first, "steady": steady, "nfev": int(res.nfev), "success": bool(res.success),
            "x": [float(v) for v in res.x], "diffopt": f"{diffopt.__file__}"}


def child_smf_adam(args):
    model, guess = _smf_model(args.halos)
    nsteps = 1000
    first, _ = _timed(lambda: model.run_adam(guess, nsteps=nsteps, progress=False))
    steady, _ = _timed(lambda: model.run_adam(guess, nsteps=nsteps, progress=False))
    return {"first": first, "steady": steady, "nsteps": nsteps}


def smf_section(args):
    print(f"\n2. seed SMF model, {args.halos:,} halos (fresh process for each first call)")
    bare = _child("smf_bare", args)
    bfgs = _child("smf_bfgs", args)
    adam = _child("smf_adam", args)
    compile_s = bare["first"] - bare["per_call"]
    print(f"   bare jitted value_and_grad: first call {bare['first']:.3f} s, one call {bare['per_call'] * 1e3:.3f} ms")
    for name, r, nev in (("BFGS", bfgs, bfgs["nfev"]), (f"run_adam {adam['nsteps']} steps", adam, adam["nsteps"])):
        floor = compile_s + nev * bare["per_call"]
        print(f"   {name:22s} first call {r['first']:7.3f} s, steady {r['steady']:7.3f} s, "
              f"first / (bare compile + {nev} x call) = {r['first'] / floor:.2f} (target <= 1.5)")
    print(f"   BFGS: {bfgs['nfev']} evaluations, success {bfgs['success']}, x = {bfgs['x']}")
    return bfgs


# --- 3. 20-parameter kdescent fit ----------------------------------------------------


# The tutorials' fits: their cells (examples/kdescent_*.py), unchanged, and the fit's settings.
TUTORIAL_FITS = {
    "advanced": ("kdescent_advanced.py", (1, 9, 10, 11, 13), 0.05,
                 "20-parameter kdescent fit (examples/kdescent_advanced.py: 3 KCalcs, 20,000 model points)"),
    "quickstart": ("kdescent_quickstart.py", (1, 2, 3, 4), 1.0,
                   "5-parameter kdescent fit (examples/kdescent_quickstart.py: 1 KCalc, 5,000 model points)"),
}


def _tutorial_problem(name):
    """The cells of a kdescent tutorial that define its loss, guess and bounds."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    filename, cells, _, _ = TUTORIAL_FITS[name]
    source = (REPO / "examples" / filename).read_text()
    namespace: dict = {}
    for cell in cells:
        code = re.search(rf"# --8<-- \[start:cell{cell}\]\n(.*?)# --8<-- \[end:cell{cell}\]", source, re.S)
        exec(compile(code.group(1), f"{filename}:cell{cell}", "exec"), namespace)
    if "bounds" not in namespace:  # the quickstart defines them in the cell that runs its fit
        import jax.numpy as jnp

        namespace["guess"] = jnp.array([0.0, 0.0, 1.0, 1.0, 0.0])
        namespace["bounds"] = [None, None, (0.001, None), (0.001, None), (-0.999, 0.999)]
    return namespace


def child_kd_bare(args):
    import jax

    ns = _tutorial_problem(args.kd_problem)
    bare = jax.jit(jax.value_and_grad(ns["lossfunc"]))
    key = jax.random.key(0)
    first, _ = _timed(lambda: bare(ns["guess"], key))
    per_call = _median_time(lambda: bare(ns["guess"], key), max(args.repeats, 20))
    return {"first": first, "per_call": per_call}


def child_kd_fit(args):
    from diffopt import kdescent

    ns = _tutorial_problem(args.kd_problem)
    n1, n2 = (int(v) for v in args.fit_steps.split(","))

    def fit(nsteps):
        return kdescent.adam(ns["lossfunc"], ns["guess"], nsteps=nsteps, param_bounds=ns["bounds"],
                             learning_rate=TUTORIAL_FITS[args.kd_problem][2], randkey=12345, progress=False)

    first, _ = _timed(lambda: fit(n1))
    second, _ = _timed(lambda: fit(n2))
    steady2, _ = _timed(lambda: fit(n2))
    return {"n1": n1, "n2": n2, "first": first, "second": second, "steady2": steady2}


def kdescent_fit_section(args):
    for number, problem in (("3", "advanced"), ("3b", "quickstart")):
        args.kd_problem = problem
        print(f"\n{number}. {TUTORIAL_FITS[problem][3]}")
        bare = _child("kd_bare", args)
        fit = _child("kd_fit", args)
        compile_s = bare["first"] - bare["per_call"]
        floor = compile_s + fit["n1"] * bare["per_call"]
        print(f"   bare jitted value_and_grad: first call {bare['first']:.2f} s, one call "
              f"{bare['per_call'] * 1e3:.3f} ms")
        print(f"   kdescent.adam {fit['n1']} steps, first call {fit['first']:.2f} s; bare compile + "
              f"{fit['n1']} x call = {floor:.2f} s; ratio {fit['first'] / floor:.2f} (target <= 1.5)")
        print(f"   then {fit['n2']} steps: {fit['second']:.2f} s, steady state {fit['steady2']:.2f} s, "
              f"ratio {fit['second'] / fit['steady2']:.2f} (target <= 1.2)")


# --- 4. the released diffopt 2.0.0 ----------------------------------------------------


def reference_section(args, ours):
    path = Path(args.reference).resolve()
    # The release first; keep other entries (installed wheels), never this checkout.
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != REPO]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), *keep]))
    ref = _child("smf_bfgs", args, env=env)
    assert Path(ref["diffopt"]).resolve().is_relative_to(path), f"the reference ran {ref['diffopt']}"
    print(f"\n4. released diffopt from {path}, seed SMF, {args.halos:,} halos, BFGS (fresh process)")
    print(f"   reference: first call {ref['first']:.3f} s, steady {ref['steady']:.3f} s, {ref['nfev']} evaluations")
    print(f"   ours:      first call {ours['first']:.3f} s, steady {ours['steady']:.3f} s, {ours['nfev']} evaluations")
    print(f"   first call ours / reference = {ours['first'] / ref['first']:.2f} (target <= 1)")


CHILDREN = {"smf_bare": child_smf_bare, "smf_bfgs": child_smf_bfgs, "smf_adam": child_smf_adam,
            "kd_bare": child_kd_bare, "kd_fit": child_kd_fit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npoints", default="1000000,10000000", help="comma-separated N for section 1")
    parser.add_argument("--halos", type=int, default=1_000_000)
    parser.add_argument("--fit-steps", default="300,200", help="nsteps of the first and second kdescent fit")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--reference", default=None, help="folder holding the released diffopt package")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (1,2,3)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kd-problem", default="advanced", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(CHILDREN[args.child](args)))
        return
    if args.reference and not (Path(args.reference) / "diffopt" / "__init__.py").is_file():
        parser.error(f"--reference {args.reference}: no diffopt package in that folder")
    t0 = time.perf_counter()
    print(f"device: {_device()}; {os.cpu_count()} CPU(s)\n", flush=True)
    skip = set(args.skip.split(","))

    def section(fn, *a):
        # One failing section must not cost the others (GPU time is scarce).
        start = time.perf_counter()
        try:
            return fn(*a)
        except Exception as err:
            print(f"   FAILED: {type(err).__name__}: {err}")
        finally:
            print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)

    if "1" not in skip:
        section(kernels_section, [int(float(v)) for v in args.npoints.split(",")], args.repeats)
    ours = section(smf_section, args) if "2" not in skip or args.reference else None
    if "3" not in skip:
        section(kdescent_fit_section, args)
    if args.reference and ours is not None:
        section(reference_section, args, ours)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
