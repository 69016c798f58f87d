"""Every MPI test script checks that it runs on the number of ranks its test asked for.

An ``mpiexec`` of another MPI than mpi4py's starts N copies of rank 0 of 1:
a script that did not check would then compare one process with itself.
"""

from __future__ import annotations

import re

import pytest

from conftest import TESTS, run_mpi

SCRIPTS = sorted((TESTS / "mpi").glob("*.py"))
RANK_CHECK = re.compile(
    r"assert (comm\.size|nranks) == (int\(sys\.argv\[1\]\)|expected_ranks), "
    r"f\"expected \{(sys\.argv\[1\]|expected_ranks)\} ranks"
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_asserts_its_rank_count(script):
    text = script.read_text()
    assert RANK_CHECK.search(text), f"{script.name} does not assert that it runs on argv[1] ranks"
    assert "int(sys.argv[1])" in text, f"{script.name} does not take the rank count as argv[1]"


@pytest.mark.mpi
def test_a_script_on_fewer_ranks_than_asked_fails():
    proc = run_mpi(TESTS / "mpi" / "primitives.py", 1, "2", check=False, timeout=120)
    assert proc.returncode != 0
    assert "expected 2 ranks, running on 1" in proc.stderr
