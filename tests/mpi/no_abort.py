"""Under mpiexec (2 ranks): with DIFFOPT_NO_ABORT set, diffopt leaves Python's exception hook alone.

Usage: no_abort.py NRANKS

Every rank prints whether ``sys.excepthook`` is still Python's own after
importing diffopt. Then rank 1 raises an uncaught exception, with no
collective operation pending: without DIFFOPT_NO_ABORT diffopt's hook shows
it tagged with the rank and aborts the job; with it, Python prints its usual
traceback, rank 1 exits with status 1 and rank 0 finishes on its own.
"""

import sys

from mpi4py import MPI

import diffopt  # noqa: F401  (importing it is what installs the hook)

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
print(f"rank {comm.rank}: Python's own excepthook: {sys.excepthook is sys.__excepthook__}", flush=True)
comm.Barrier()
if comm.rank == 1:
    raise RuntimeError("raised on rank 1")
print(f"rank {comm.rank}: finished", flush=True)
