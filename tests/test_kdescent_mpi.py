"""kdescent under a real mpiexec: pretraining spread over ranks, model samples split across them."""

from __future__ import annotations

import pytest

from conftest import TESTS, mpi_env

pytestmark = pytest.mark.mpi

SCRIPT = TESTS / "mpi" / "kdescent_split.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # The runs share a persistent compilation cache: rank 0's single-process
    # references are the same programs on 1, 2 and 3 ranks.
    cache = tmp_path_factory.mktemp("kdescent_jax_cache")
    return mpi_env(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_split_sample_matches_single_process(nranks, env, mpirun):
    args = [str(nranks)] + (["--hessian"] if nranks == 3 else [])
    proc = mpirun(SCRIPT, nranks, *args, env=env, timeout=240)
    assert f"kdescent split over {nranks} rank(s): OK" in proc.stdout
