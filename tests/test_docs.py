"""The documentation: every page's code runs and shows what the page says, and the site builds.

The pages run in a copy of the docs tree (docs/, mkdocs.yml and the examples
the pages include), so the figures they draw land in the copy, not in the
committed docs/images/. The site is then built from that copy with
``mkdocs build --strict``: any warning of mkdocs or mkdocstrings fails.
This is also where the two tutorials run (examples/multigrad_quickstart.py,
examples/kdescent_*.py hold their cells, which the pages include).
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from docs_harness import SHOWN_IMAGE, page_blocks, run_page

PAGES = sorted(p.name for p in (REPO / "docs").glob("*.md"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of everything the site is built from."""
    root = tmp_path_factory.mktemp("docs_tree")
    for name in ("docs", "examples"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    return root


def printed(output: str, label: str) -> np.ndarray:
    """The numbers that ``print(label, value)`` printed (the first time)."""
    match = re.search(re.escape(label) + r"\s*(\[[^\]]*\]|\S+)", output)
    assert match, f"{label!r} was not printed"
    return np.array(match.group(1).strip("[]").split(), dtype=float)


def check_multigrad_quickstart(run, workdir):
    three_ranks, notebook = run.outputs
    # As the tutorial says: zero loss and gradient at the truth, then BFGS finds it.
    at_truth = notebook.split("At true_params:")[1]
    assert abs(printed(at_truth, "Loss =")[0]) < 1e-10
    np.testing.assert_allclose(printed(at_truth, "Grad(loss) ="), 0, atol=1e-6)
    # "... both stop within 1e-5 of the truth."
    for output in (notebook, three_ranks):
        assert "BGFS has converged: True" in output
        np.testing.assert_allclose(printed(output, "Converged params ="), [-2.0, -0.5], rtol=0, atol=1e-5)


def check_kdescent_quickstart(run, workdir):
    (output,) = run.outputs
    assert (workdir / "pretrainer.npz").is_file()
    # The 5-parameter fit recovers the truth.
    np.testing.assert_allclose(printed(output, "Final params ="), run.kept["truth_params"], atol=0.25)
    # The 20-parameter fit lowers its loss tenfold.
    params, losses = run.kept["adam_params"], run.kept["adam_losses"]
    assert params.shape == (601, 20) and losses.shape == (601,)
    assert np.all(np.isfinite(losses))
    assert losses[:10].mean() > 10 * losses[-10:].mean(), (losses[:10].mean(), losses[-10:].mean())
    np.testing.assert_allclose(printed(output, "Best fit params ="), params[-1], rtol=1e-6)


def check_many_ranks(run, workdir):
    # Each command ran on the ranks it asked for (the scripts themselves check
    # their results against one process).
    for n in (1, 2, 3):
        assert len(np.load(workdir / f"uneven_split_{n}.npz")["counts"]) == n
    assert "2 rank(s) holding [67, 133] points" in run.outputs[1]
    assert "3 rank(s) holding [67, 133, 0] points" in run.outputs[2]
    assert "2 surveys on 3 ranks" in run.outputs[3]
    assert "4 ranks, 2 pairs" in run.outputs[4]
    cluster = run.outputs[5]
    assert "2 rank(s) on 1 node(s), 20,000 halos in all" in cluster and "BFGS has converged: True" in cluster
    assert cluster.count(", 10,000 halos") == 2


def check_fisher(run, workdir):
    one, three = np.load(workdir / "fisher_1.npz"), np.load(workdir / "fisher_3.npz")
    # "On three ranks the Hessian equals the one-process Hessian and J^T C^-1 J
    # to round-off, below 1e-15."
    difference = np.max(np.abs(three["fisher"] - one["fisher"])) / np.max(np.abs(one["fisher"]))
    assert difference < 1e-15, difference
    for run_ in (one, three):
        assert float(run_["one process"]) < 1e-15 and float(run_["J^T C^-1 J"]) < 1e-15
        # "[finite differences'] error falls as h^2 ... and reaches about 1e-9 at
        # h = 1e-6, on one rank and on three alike."
        assert 1e-10 < float(run_["finite differences"]) < 1e-8, float(run_["finite differences"])
        steps, errors = run_["steps"], run_["finite_diff_errors"]
        slope = np.log(errors[-1] / errors[-5]) / np.log(steps[-1] / steps[-5])
        assert 1.9 < slope < 2.1, slope


def check_optax_and_jit(run, workdir):
    losses, best = run.kept, float(run.kept["best"])
    # "L-BFGS ... reaches the minimum to round-off within ten steps; after 150
    # steps the first-order methods are still 1e-7 to 1e-6 above it."
    assert losses["losses[lbfgs()]"][10] - best <= 1e-15 * abs(best)
    for name in ("adam(0.05)", "chain(clip_by_global_norm(1.0), sgd(0.1, momentum=0.9))"):
        assert 1e-8 < losses[f"losses[{name}]"][-1] - best < 1e-5, name
    # "The hand-written loop's curve lies on the one of run_adam with the same optimiser."
    # run_adam also evaluates its final parameters: one loss more than the scan's 150.
    own = run.kept["own_losses"]
    assert own.shape == (150,)
    np.testing.assert_allclose(own, losses["losses[adam(0.05)]"][:150], rtol=1e-11)


def check_coming_from_2(run, workdir):
    kept = run.kept
    # "histories have shape (n, *shape) ... the guess first and the final parameters last"
    assert kept["adam_params"].shape == (101, 2) and kept["adam_losses"].shape == (101,)
    np.testing.assert_array_equal(kept["adam_params"][0], kept["guess"].astype(np.float32))
    np.testing.assert_allclose(kept["bfgs_params"][-1], kept["truth"], atol=1e-3)
    # "with an inertia of 1 ... the swarm does not settle"
    assert kept["best_loss"] < 1e-5 < 1e-3 < kept["old_best_loss"]


def check_bounds(run, workdir):
    free, bounded, bfgs = run.kept["free"], run.kept["bounded"], run.kept["bfgs_path"]
    # "BFGS stops on the bound itself within a few iterations."
    assert bfgs[:4, 0].max() == 0.2 and bfgs[-1, 0] == 0.2
    # "In both bounded fits d adjusts to the capped fraction."
    assert abs(bounded[-1, 1] - bfgs[-1, 1]) < 0.01 and min(bounded[-1, 1], bfgs[-1, 1]) > free[-1, 1] + 0.1


def check_reliability(run, workdir):
    # The failing job, the bad inputs, the NaN warning, the resumed fit and
    # the refused checkpoint: each shows the output its code printed.
    assert run.shown_outputs_checked == 5
    # "warns with the step number, and returns the history up to the last finite step"
    step = int(re.search(r"non-finite at step (\d+)", run.outputs[-1]).group(1))
    assert len(run.kept["history"]) == step


def check_sampling(run, workdir):
    smf = np.load(workdir / "smf_posterior.npz")
    draws = smf["samples"].reshape(-1, 2)
    # "The chains agree with each other (split-R-hat within 1% of 1) and with the Fisher Gaussian."
    assert np.all(np.abs(smf["rhat"] - 1) < 0.01), smf["rhat"]
    fisher_std = np.sqrt(np.diag(np.linalg.inv(smf["fisher"])))
    np.testing.assert_allclose(draws.std(axis=0), fisher_std, rtol=0.1)
    mcse = fisher_std / np.sqrt(smf["ess"])
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - smf["best"]), 5 * mcse)
    assert "identical chains on every rank" in run.outputs[0]
    kd = np.load(workdir / "kdescent_posterior.npz")
    assert kd["samples"].shape == (30, 20) and np.all(np.isfinite(kd["logdensity"]))
    assert "2 ranks: identical chains" in run.outputs[1]


# What each page claims, checked on the output of its code and the globals it
# keeps (the pages' code and scripts also assert their own claims), besides
# the outputs the pages show, which the harness compares with what the code
# printed.
CHECKS = {
    "multigrad-quickstart.md": ((), check_multigrad_quickstart),
    "kdescent-quickstart.md": (("truth_params", "adam_params", "adam_losses"), check_kdescent_quickstart),
    "optax-and-jit.md": (("losses", "own_losses", "best"), check_optax_and_jit),
    "bounds.md": (("free", "bounded", "bfgs_path"), check_bounds),
    "coming-from-2.md": (("adam_params", "adam_losses", "guess", "bfgs_params", "truth", "best_loss",
                          "old_best_loss"), check_coming_from_2),
    "many-ranks.md": ((), check_many_ranks),
    "fisher.md": ((), check_fisher),
    "sampling.md": ((), check_sampling),
    "reliability.md": (("history",), check_reliability),
}


def test_every_page_with_code_has_a_check():
    for page in PAGES:
        if page_blocks((REPO / "docs" / page).read_text(), REPO):
            assert page in CHECKS, f"{page} runs code, but nothing checks what it claims"


@pytest.mark.mpi
@pytest.mark.parametrize("page", PAGES)
def test_page_runs_and_shows_what_it_claims(tree, page, tmp_path):
    keep, check = CHECKS.get(page, ((), None))
    run = run_page(tree / "docs" / page, tree, tmp_path, tree / "docs" / "images", keep)
    if check is not None:
        check(run, tmp_path)
    for image in SHOWN_IMAGE.findall((tree / "docs" / page).read_text()):
        assert (tmp_path / image).is_file(), f"{page} shows {image}, which its code did not draw"


def test_every_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    for page in PAGES + [f"api/{p.name}" for p in (REPO / "docs" / "api").glob("*.md")]:
        assert f": {page}" in nav, f"{page} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("module", ["multigrad", "kdescent", "multiswarm", "optim", "sample"])
def test_api_reference_lists_every_public_name(module):
    page = (REPO / "docs" / "api" / f"{module}.md").read_text()
    documented = set(re.findall(rf"^::: diffopt\.{module}\.(\w+)$", page, re.M))
    assert documented == set(importlib.import_module(f"diffopt.{module}").__all__)


def test_api_reference_lists_every_top_level_function():
    import diffopt

    page = (REPO / "docs" / "api" / "diffopt.md").read_text()
    documented = set(re.findall(r"^::: diffopt\.(\w+)$", page, re.M))
    functions = {name for name in diffopt.__all__ if callable(getattr(diffopt, name))}
    assert documented == functions


def test_site_builds_in_strict_mode(tree):
    """Runs after the pages (pytest keeps file order), so it builds with the figures they just drew."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tree / "site")],
        cwd=tree, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for page in ("index.html", "fisher/index.html", "api/multigrad/index.html"):
        assert (tree / "site" / page).is_file(), page
