"""The kdescent tutorial, run as written (examples/kdescent_*.py hold its cells unchanged)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from conftest import REPO

EXAMPLES = REPO / "examples"

# Runs an example and saves the globals the checks need.
RUNNER = """
import runpy, sys, numpy as np
g = runpy.run_path(sys.argv[1], run_name="__main__")
np.savez("results.npz", **{k: np.asarray(g[k]) for k in sys.argv[2:]})
"""


def run_example(name, tmp_path, *keep, timeout=600):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(EXAMPLES / name), *keep], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with np.load(tmp_path / "results.npz") as f:
        return {k: f[k] for k in f.files}, proc


def test_quickstart_recovers_the_five_parameters(tmp_path):
    res, proc = run_example("kdescent_quickstart.py", tmp_path, "adam_params", "adam_losses", "truth_params")
    params, truth = res["adam_params"], res["truth_params"]
    assert params.shape == (101, 5) and res["adam_losses"].shape == (100,)
    np.testing.assert_allclose(params[-1], truth, atol=0.25)
    assert "Final params =" in proc.stdout
    assert (tmp_path / "pretrainer.npz").exists()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["kdescent_quickstart_1.png", "kdescent_quickstart_2.png"]


def test_advanced_example_lowers_its_loss_tenfold(tmp_path):
    res, proc = run_example("kdescent_advanced.py", tmp_path, "adam_params", "adam_losses")
    losses = res["adam_losses"]
    assert res["adam_params"].shape == (601, 20) and losses.shape == (600,)
    assert np.all(np.isfinite(losses))
    assert losses[:10].mean() > 10 * losses[-10:].mean(), (losses[:10].mean(), losses[-10:].mean())
    assert "Best fit params =" in proc.stdout
    assert len(list(tmp_path.glob("kdescent_advanced_*.png"))) == 3
