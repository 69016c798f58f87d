"""Break the package on purpose and check that the tests notice.

Each mutant is one small change to one file: the exact text to find (it must
occur exactly once) and what to put in its place, with the tests that claim
to guard that code. For each mutant, the repository's working tree (tracked
files and untracked ones that git does not ignore, as they are now) is
copied to a temporary folder, the change is made there, and the tests run
there with that copy first on PYTHONPATH (tests/conftest.py's ``run_mpi``
gives MPI ranks the copy's root too). The working tree is never touched.

A mutant is caught when at least one of its tests fails; the table says how
many did. A snippet that is not found (a stale mutant, after the code it
targets moved) is an error, never "caught". The script exits non-zero if any
mutant survives, any snippet is missing or any test run errs.

    .venv/bin/python scripts/mutants.py             # every mutant (10 to 13 minutes on 2 cores)
    .venv/bin/python scripts/mutants.py --check     # only check that every snippet and test is found
    .venv/bin/python scripts/mutants.py --list      # the mutants and their tests
    .venv/bin/python scripts/mutants.py NAME ...    # the mutants whose names contain NAME

After a refactor, retarget a mutant by editing its ``file``, ``find`` and
``replace`` below; ``--check`` shows which ones need it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    find: str  # exact text, found exactly once in the file
    replace: str
    tests: tuple[str, ...]  # pytest node ids, relative to the repository root


MUTANTS = [
    Mutant(
        "checkpoint loader finds no checkpoint (fits, swarm and sampler share it)",
        "diffopt/optim/_checkpoint.py",
        "        loaded = _npz.read_on_root(self.path, lambda p: self._read(p, num_leaves), comm)\n",
        "        loaded = None\n",
        (
            "tests/test_reliability.py::test_kdescent_adam_resumes_and_extends_a_fit",
            "tests/test_reliability.py::test_simple_grad_descent_resumes_from_its_checkpoint",
            "tests/test_reliability.py::test_death_while_writing_a_checkpoint_keeps_the_previous_one[fit]",
            "tests/test_reliability.py::test_job_killed_with_sigkill_resumes_to_identical_params[adam-1-400]",
            "tests/test_multiswarm.py::test_checkpoint_resumes_an_interrupted_run",
            "tests/test_sample.py::test_killed_sampling_job_resumes_to_identical_draws[1]",
        ),
    ),
    Mutant(
        "swarm resumes without its random generator's state",
        "diffopt/multiswarm/_swarm.py",
        "            rng.bit_generator.state = random_state\n",
        "            pass\n",
        (
            "tests/test_multiswarm.py::test_checkpoint_resumes_an_interrupted_run",
            "tests/test_reliability.py::test_job_killed_with_sigkill_resumes_to_identical_params[pso-2-300]",
        ),
    ),
    Mutant(
        "checkpoint written in place, not atomically",
        "diffopt/_npz.py",
        '    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")\n',
        "    tmp = path\n",
        (
            "tests/test_reliability.py::test_death_while_writing_a_checkpoint_keeps_the_previous_one",
        ),
    ),
    Mutant(
        "fit checkpoint of another problem accepted",
        "diffopt/optim/_checkpoint.py",
        '        if str(data["problem"]) != self.problem:\n',
        "        if False:\n",
        ("tests/test_reliability.py::test_fit_checkpoint_of_another_problem_is_refused",),
    ),
    Mutant(
        "fit checkpoint of another random key accepted",
        "diffopt/optim/_checkpoint.py",
        '        if self.key is not None and not np.array_equal(data.get("key"), self.key):\n',
        "        if False:\n",
        ("tests/test_reliability.py::test_fit_checkpoint_of_another_random_key_is_refused",),
    ),
    Mutant(
        "replicate's cotangent scaled by 1 + 1e-7",
        "diffopt/_comm.py",
        "    return [_allreduce_sum(ct, comm)]\n",
        "    return [_allreduce_sum(ct, comm) * (1 + 1e-7)]\n",
        (
            "tests/test_multigrad.py::test_exact_across_ranks[2]",
            "tests/test_multigrad.py::test_fits_agree_between_1_and_3_ranks",
            "tests/test_release_compat.py::test_public_primitives_are_exact[3]",
        ),
    ),
    Mutant(
        "rank 1's partial sums dropped",
        "diffopt/_comm.py",
        "        return [_allreduce_sum(x, comm) for x in leaves]\n",
        "        return [_allreduce_sum(x * (comm.rank != 1), comm) for x in leaves]\n",
        (
            "tests/test_multigrad.py::test_exact_across_ranks[2]",
            "tests/test_multigrad.py::test_fits_agree_between_1_and_3_ranks",
            "tests/test_release_compat.py::test_public_primitives_are_exact[3]",
        ),
    ),
    Mutant(
        "bounds' reparametrisation off by a constant",
        "diffopt/optim/_bounds.py",
        "        both = lo + (hi - lo) * jax.nn.sigmoid(z)\n",
        "        both = lo + (hi - lo) * jax.nn.sigmoid(z + 1e-3)\n",
        (
            "tests/test_bounds.py::test_reparam_is_the_documented_map_and_its_inverse",
            "tests/test_bounds.py::test_a_bounded_fit_starts_at_its_guess_and_stays_inside",
        ),
    ),
    Mutant(
        "NaN stop disabled",
        "diffopt/optim/_fit.py",
        "        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g_z))\n",
        "        finite = jnp.asarray(True)\n",
        (
            "tests/test_multigrad.py::test_nan_loss_stops_fit_with_warning",
            "tests/test_reliability.py::test_non_finite_loss_stops_kdescent_adam_with_the_step",
            "tests/test_reliability.py::test_non_finite_gradient_stops_every_rank_at_the_same_step",
        ),
    ),
    Mutant(
        "swarm personal best never updated",
        "diffopt/multiswarm/_update.py",
        "    improved = losses < state.best_loss\n",
        "    improved = jnp.zeros_like(losses, dtype=bool)\n",
        (
            "tests/test_multiswarm.py::test_personal_bests_are_tracked_per_particle",
            "tests/test_multiswarm.py::test_ackley_converges_on_one_rank",
        ),
    ),
    Mutant(
        "kernel bandwidth off by 1%",
        "diffopt/kdescent/_pretrainer.py",
        "    return num_eval_kernels ** (-1.0 / (ndim + 4)) * bandwidth_factor\n",
        "    return num_eval_kernels ** (-1.0 / (ndim + 4)) * bandwidth_factor * 1.01\n",
        ("tests/test_kdescent_pretrainer.py::test_kernel_covariance_and_fourier_range",),
    ),
    Mutant(
        "pretrainer load skips the shape check of its arrays",
        "diffopt/kdescent/_pretrainer.py",
        "            if arr.shape != shape:\n",
        "            if False:\n",
        ("tests/test_kdescent_pretrainer.py::test_load_rejects_files_that_are_not_pretrainers",),
    ),
    Mutant(
        "pretrainer load skips the dtype check of its arrays",
        "diffopt/kdescent/_pretrainer.py",
        "            if arr.dtype.kind != kind:\n",
        "            if False:\n",
        ("tests/test_kdescent_pretrainer.py::test_load_rejects_files_that_are_not_pretrainers",),
    ),
    Mutant(
        "DIFFOPT_NO_ABORT ignored",
        "diffopt/_comm.py",
        ' or os.environ.get("DIFFOPT_NO_ABORT"):\n',
        ":\n",
        ("tests/test_reliability.py::test_diffopt_no_abort_leaves_the_exception_hook_alone[True]",),
    ),
    Mutant(
        "host-side layout check before a fit skipped",
        "diffopt/_comm.py",
        "    layouts = comm.allgather(_describe(jax.tree_util.tree_leaves(tree)))\n",
        "    return\n",
        ("tests/test_reliability.py::test_mismatch_across_ranks_raises_on_every_rank[2]",),
    ),
    Mutant(
        "sampler's log-Jacobian of the bounds dropped",
        "diffopt/sample/_sampler.py",
        "        return out if self.reparam is None else out + self.reparam.log_abs_det_jacobian(z)\n",
        "        return out\n",
        ("tests/test_sample.py::test_flat_prior_in_bounds_samples_the_box_uniformly",),
    ),
    Mutant(
        "sampler's chains split their keys by rank",
        "diffopt/sample/_sampler.py",
        "        keys = jax.random.split(jax.random.fold_in(key, t), self.nchains)\n",
        "        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, t), jax.process_index()"
        " + int(__import__('mpi4py.MPI').MPI.COMM_WORLD.rank)), self.nchains)\n",
        ("tests/test_sample.py::test_chains_identical_on_every_rank_and_equal_to_one_process",),
    ),
    Mutant(
        "optimisers compared by identity (a rebuilt optimiser recompiles)",
        "diffopt/optim/_static.py",
        "        return isinstance(other, StaticOptimizer) and self._key == other._key\n",
        "        return isinstance(other, StaticOptimizer) and self.value is other.value\n",
        ("tests/test_compile_once.py::test_second_call_of_a_problem_compiles_nothing",),
    ),
    Mutant(
        "array-like guesses kept as tuples",
        "diffopt/_params.py",
        "        arr = _sequence_as_array(params)\n",
        "        arr = None\n",
        ("tests/test_release_compat.py::test_array_like_guess_is_an_array",),
    ),
    Mutant(
        "a fit non-finite at its guess returns instead of raising",
        "diffopt/optim/_fit.py",
        "        if done == 0:\n",
        "        if False:\n",
        ("tests/test_release_compat.py::test_nonfinite_guess_raises_on_every_rank",),
    ),
    Mutant(
        "kdescent matrix products at the default precision (TF32 on a GPU)",
        "diffopt/kdescent/_kernels.py",
        "    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)\n",
        "    return jnp.matmul(a, b)\n",
        ("tests/test_kdescent_blocks.py::test_every_matmul_is_full_precision",),
    ),
    Mutant(
        "ECF phase factor as a chain of angle additions (exponential once fused)",
        "diffopt/kdescent/_kernels.py",
        "    factors = jnp.prod(jax.lax.complex(jnp.cos(angles), jnp.sin(angles)), axis=1)\n"
        "    return jnp.real(factors), jnp.imag(factors)\n",
        "    cos, sin = jnp.cos(angles), jnp.sin(angles)\n"
        "    re, im = cos[:, 0], sin[:, 0]\n"
        "    for j in range(1, angles.shape[1]):\n"
        "        re, im = re * cos[:, j] - im * sin[:, j], re * sin[:, j] + im * cos[:, j]\n"
        "    return re, im\n",
        ("tests/test_kdescent_kernels.py::test_many_dimensions_do_not_blow_up_compiled_code",),
    ),
    Mutant(
        "kdescent GPU policy without the barrier on the points' cotangents",
        "diffopt/kdescent/_kernels.py",
        "    return jax.lax.optimization_barrier(dx) if plan.policy.separate_point_cotangents else dx\n",
        "    return dx\n",
        ("tests/test_kdescent_blocks.py::test_gpu_policy_separates_the_point_cotangents",),
    ),
    Mutant(
        "kdescent points' tangents scaled by 1 + 1e-7 behind the barrier",
        "diffopt/kdescent/_kernels.py",
        "    return jax.lax.optimization_barrier(dx) if plan.policy.separate_point_cotangents else dx\n",
        "    return jax.lax.optimization_barrier(dx * (1 + 1e-7)) if plan.policy.separate_point_cotangents else dx\n",
        (
            "tests/test_kdescent_blocks.py::test_gpu_policy_agrees_with_cpu_float64",
            "tests/test_kdescent_blocks.py::test_each_policy_choice_agrees_float64[change3]",
        ),
    ),
]


def working_tree_files() -> list[str]:
    """Tracked files and untracked ones git does not ignore, as they are in the working tree."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted({name for name in out.split("\0") if name and (REPO / name).is_file()})


def copy_tree(files: list[str], dest: Path) -> None:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def snippet_problem(mutant: Mutant, root: Path = REPO) -> str | None:
    """Why the mutant cannot be applied to the tree at ``root`` (None if it can)."""
    path = root / mutant.file
    if not path.is_file():
        return f"no file {mutant.file}"
    count = path.read_text().count(mutant.find)
    if count != 1:
        return f"snippet found {count} times in {mutant.file} (must be exactly once): {mutant.find.strip()!r}"
    return None


def missing_tests(mutants: list[Mutant]) -> str | None:
    """pytest's complaint if any test a mutant names cannot be collected (None if all can)."""
    ids = sorted({t for m in mutants for t in m.tests})
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", *ids], cwd=REPO, env=env_for(REPO), capture_output=True,
                          text=True, timeout=600)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr)[-3000:]


def env_for(copy: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def imports_from(copy: Path) -> str:
    out = subprocess.run([sys.executable, "-c", "import diffopt; print(diffopt.__file__)"], cwd=copy,
                         env=env_for(copy), capture_output=True, text=True, timeout=300)
    return out.stdout.strip() or out.stderr.strip()[-500:]


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, int, int, str]:
    """Run ``tests`` in ``copy``: (pytest's exit status, failed, passed, the output's tail)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests],
        cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=3600,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    failed = sum(int(n) for n in re.findall(r"(\d+) (?:failed|error)", summary))
    passed = sum(int(n) for n in re.findall(r"(\d+) passed", summary))
    return proc.returncode, failed, passed, (proc.stdout + proc.stderr)[-3000:]


def run_mutant(mutant: Mutant, files: list[str], verbose: bool) -> tuple[str, bool, float]:
    """Apply ``mutant`` to a fresh copy and run its tests: (verdict, whether it counts as caught, seconds)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffopt-mutant-") as tmp:
        copy = Path(tmp) / "repo"
        copy_tree(files, copy)
        problem = snippet_problem(mutant, copy)
        if problem is not None:
            return f"ERROR: {problem}", False, time.perf_counter() - start
        path = copy / mutant.file
        path.write_text(path.read_text().replace(mutant.find, mutant.replace))
        source = imports_from(copy)
        if not source.startswith(str(copy)):
            return f"ERROR: diffopt imported from {source}, not the copy", False, time.perf_counter() - start
        status, failed, passed, tail = run_tests(copy, mutant.tests)
    seconds = time.perf_counter() - start
    if verbose or status not in (0, 1):
        print(tail, flush=True)
    if status == 0:
        return f"SURVIVED ({passed} of {passed} tests passed)", False, seconds
    if status == 1:
        return f"caught ({failed} of {failed + passed} tests failed)", True, seconds
    return f"ERROR: pytest exit status {status} (a test id not found, or a collection error)", False, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only the mutants whose names contain one of these")
    parser.add_argument("--check", action="store_true", help="only check that every snippet is found")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    parser.add_argument("--verbose", action="store_true", help="show the tail of every test run")
    args = parser.parse_args()

    mutants = [m for m in MUTANTS if not args.names or any(n.lower() in m.name.lower() for n in args.names)]
    if args.list:
        for m in mutants:
            print(f"{m.name}\n  {m.file}: {m.find.strip()!r} -> {m.replace.strip()!r}")
            for t in m.tests:
                print(f"    {t}")
        return 0
    stale = {m.name: snippet_problem(m) for m in mutants}
    stale = {name: why for name, why in stale.items() if why}
    for name, why in stale.items():
        print(f"STALE MUTANT {name!r}: {why}", file=sys.stderr)
    if args.check:
        missing = missing_tests(mutants)
        if missing:
            print(f"tests that cannot be collected:\n{missing}", file=sys.stderr)
        print(f"{len(mutants) - len(stale)} of {len(mutants)} mutants apply"
              + ("; every test they name exists" if not missing else ""))
        return 1 if stale or missing else 0

    files = working_tree_files()
    rows, ok = [], not stale
    started = time.perf_counter()
    for m in mutants:
        if m.name in stale:
            rows.append((m, f"ERROR: {stale[m.name]}", 0.0))
            continue
        print(f"--- {m.name}: {len(m.tests)} test(s)", flush=True)
        verdict, caught, seconds = run_mutant(m, files, args.verbose)
        print(f"    {verdict} in {seconds:.0f} s", flush=True)
        rows.append((m, verdict, seconds))
        ok &= caught

    width = max(len(m.name) for m, _, _ in rows)
    print(f"\n{'mutant':{width}s}  {'result':42s}  seconds  tests run")
    for m, verdict, seconds in rows:
        tests = [t.split("::", 1)[1] if "::" in t else t for t in m.tests]
        print(f"{m.name:{width}s}  {verdict:42s}  {seconds:7.0f}  {tests[0]}")
        for t in tests[1:]:
            print(f"{'':{width}s}  {'':42s}  {'':7s}  {t}")
    print(f"\n{sum(v.startswith('caught') for _, v, _ in rows)} of {len(rows)} mutants caught, "
          f"{time.perf_counter() - started:.0f} s in all")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
