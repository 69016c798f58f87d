"""The communication layer: the only module of diffopt that imports MPI.

Parameters are *replicated* (every rank holds the same values) and data is
*split* (each rank holds its own part). For a loss
``L(sum_over_ranks(s_rank(replicate(params))))``:

- :func:`sum_over_ranks` is an allreduce going forward whose cotangent rule is
  the identity (mpi4jax's own rule), and
- :func:`replicate` is the identity going forward whose cotangent is summed
  over ranks,

so that ``jax.grad``, ``jax.hessian`` and ``jax.jacfwd`` of the loss are the
exact full-data values on every rank. ``replicate`` is a small primitive
rather than a ``custom_vjp`` so that forward mode (and hence ``jax.hessian``)
works through it.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jaxtyping import PyTree
from mpi4py import MPI

from . import _gpus

__all__ = [
    "MPI",
    "StaticComm",
    "default_comm",
    "replicate",
    "sum_over_ranks",
    "reduce_sum",
    "split_subcomms",
    "split_subcomms_by_node",
    "bcast",
    "allgather",
    "rank",
    "size",
    "check_layouts",
    "check_replicated",
    "abort_job",
    "install_abort_on_error",
    "map_ranks_to_gpus",
]


class StaticComm(MPI.Intracomm):
    """An ``MPI.Intracomm`` that can be hashed.

    JAX hashes static pytree fields and primitive parameters; mpi4py
    communicators are not hashable. This subclass shares the MPI handle of the
    communicator it wraps and hashes by that handle, so a model can hold its
    communicator as a static field and still be used everywhere a
    communicator is expected.
    """

    def __hash__(self) -> int:
        return hash(self.py2f())


def default_comm(comm: Any = None) -> StaticComm:
    """Return ``comm`` (``MPI.COMM_WORLD`` when None) as a hashable communicator."""
    if comm is None:
        comm = MPI.COMM_WORLD
    if isinstance(comm, StaticComm):
        return comm
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(
            f"comm must be an mpi4py intracommunicator or None, got {type(comm).__name__}"
        )
    return StaticComm(comm)


def _mpi4jax():
    # Imported lazily: mpi4jax is only needed once more than one rank runs.
    import mpi4jax

    return mpi4jax


def _allreduce_sum(x: jax.Array, comm: MPI.Comm) -> jax.Array:
    return _mpi4jax().allreduce(x, op=MPI.SUM, comm=comm)


# --- replicate: identity forward, sum of cotangents backward ----------------

replicate_p = Primitive("diffopt_replicate")
replicate_p.def_impl(lambda x, *, comm: x)
replicate_p.def_abstract_eval(lambda x, *, comm: x)
mlir.register_lowering(replicate_p, lambda ctx, x, *, comm: [x])


def _replicate_jvp(primals, tangents, *, comm):
    (x,), (t,) = primals, tangents
    out = replicate_p.bind(x, comm=comm)
    if type(t) is ad.Zero:
        return out, t
    return out, replicate_p.bind(t, comm=comm)


def _replicate_transpose(ct, x, *, comm):
    if type(ct) is ad.Zero:
        return [ct]
    return [_allreduce_sum(ct, comm)]


ad.primitive_jvps[replicate_p] = _replicate_jvp
ad.primitive_transposes[replicate_p] = _replicate_transpose
batching.primitive_batchers[replicate_p] = lambda args, dims, *, comm: (
    replicate_p.bind(args[0], comm=comm),
    dims[0],
)


def _is_differentiable(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, float, complex, np.generic)) and jnp.issubdtype(
        jnp.result_type(x), jnp.inexact
    )


def replicate(tree: PyTree, comm: Any = None) -> PyTree:
    """Mark replicated values (parameters) where they enter rank-local work.

    The identity going forward. Going backward, the cotangent of each
    floating-point leaf is summed over the ranks of ``comm``, so the gradient
    with respect to the replicated value is the full-data gradient. It is
    linear, so forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``)
    works through it too.

    Use it with :func:`sum_over_ranks` to write a loss (or log-density) over
    data split across ranks by hand::

        def loss(params):
            local = partial_stats(diffopt.replicate(params), my_data)
            return final_loss(diffopt.sum_over_ranks(local))

    Then ``jax.grad(loss)`` and ``jax.hessian(loss)`` are the full-data values
    on every rank. ``OnePointModel`` does exactly this.

    Parameters
    ----------
    tree : pytree
        Values that are identical on every rank of ``comm`` (floating-point
        leaves are marked; other leaves pass through).
    comm : MPI.Intracomm, optional
        The ranks over which the data are split (default ``MPI.COMM_WORLD``).

    Returns
    -------
    pytree
        ``tree``, unchanged in value.
    """
    comm = default_comm(comm)
    if comm.size == 1:
        return tree
    return jax.tree_util.tree_map(
        lambda x: replicate_p.bind(jnp.asarray(x), comm=comm) if _is_differentiable(x) else x,
        tree,
    )


def _as_numeric_array(x: Any, name: str) -> jax.Array:
    if isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex)) and not isinstance(x, bool):
        arr = jnp.asarray(x)
        if jnp.issubdtype(arr.dtype, jnp.number):
            return arr
    raise TypeError(
        f"{name} must be a numeric array (or a pytree of them) that can be summed "
        f"over MPI ranks; got {type(x).__name__}"
    )


def sum_over_ranks(
    tree: PyTree, comm: Any = None, *, name: str = "sumstats", check_layout: bool = True
) -> PyTree:
    """Differentiable, jit-safe sum of every leaf of ``tree`` over the ranks of ``comm``.

    An allreduce going forward. Going backward the cotangent passes through
    unchanged (each rank keeps the cotangent of the total), which paired with
    :func:`replicate` on the parameters gives exact gradients.

    Parameters
    ----------
    tree : pytree of arrays
        This rank's partial sums; the same shapes and dtypes on every rank.
    comm : MPI.Intracomm, optional
        The ranks to sum over (default ``MPI.COMM_WORLD``). Every rank of it
        must call this function, in the same order as its other collectives.
    name : str (default="sumstats")
        What the values are, for error messages.
    check_layout : bool (default=True)
        First compare the shape and dtype of every leaf across ranks,
        in-graph: one tiny allreduce, decided identically on all ranks, so a
        mismatch raises ``ValueError`` on every rank instead of corrupting the
        sum or hanging. Loops that compared the layouts once beforehand may
        pass False.

    Returns
    -------
    pytree of arrays
        The totals, identical on every rank.
    """
    comm = default_comm(comm)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        raise TypeError(f"{name} is empty: nothing to sum over MPI ranks")
    leaves = [_as_numeric_array(x, name) for x in leaves]
    if comm.size == 1:
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def summed(leaves):
        return [_allreduce_sum(x, comm) for x in leaves]

    if not check_layout:
        return jax.tree_util.tree_unflatten(treedef, summed(leaves))

    signature = _layout_signature(leaves)
    extremes = _mpi4jax().allreduce(
        jnp.array([signature, -signature], dtype=jnp.int32), op=MPI.MAX, comm=comm
    )
    consistent = extremes[0] == -extremes[1]

    def mismatched(leaves):
        jax.debug.callback(_raise_layout_mismatch, name, _describe(leaves), ordered=True)
        return [jnp.full_like(x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.inexact) else x for x in leaves]

    out = jax.lax.cond(consistent, summed, mismatched, leaves)
    return jax.tree_util.tree_unflatten(treedef, out)


def check_layouts(tree: Any, comm: Any = None, *, name: str = "sumstats") -> None:
    """Raise ``ValueError`` on every rank unless ``tree``'s leaves match across ranks.

    The host-side counterpart of the check in :func:`sum_over_ranks`, for
    shapes known before a compiled loop starts (``jax.eval_shape`` output or
    arrays): one ``allgather`` of a short description per call.
    """
    comm = default_comm(comm)
    if comm.size == 1:
        return
    layouts = comm.allgather(_describe(jax.tree_util.tree_leaves(tree)))
    if len(set(layouts)) > 1:
        found = "; ".join(f"rank {r}: {layout or 'nothing'}" for r, layout in enumerate(layouts))
        raise ValueError(
            f"{name} differ in shape or dtype across MPI ranks ({found}); every rank must "
            "return partial sums of the same shape and dtype"
        )


def _layout_signature(leaves) -> int:
    text = _describe(leaves)
    # A stable 31-bit hash (Python's str hash is salted per process).
    h = 0
    for ch in text.encode():
        h = (h * 131 + ch) % 2147483629
    return h


def _describe(leaves) -> str:
    return ";".join(f"{jnp.dtype(x.dtype)}{tuple(x.shape)}" for x in leaves)


def _raise_layout_mismatch(name: str, layout: str) -> None:
    raise ValueError(
        f"{name} differ in shape or dtype across MPI ranks (this is rank "
        f"{MPI.COMM_WORLD.rank} with {layout}); every rank must return partial "
        "sums of the same shape and dtype"
    )


# --- host-side helpers ---------------------------------------------------------


def reduce_sum(value: Any, root: int | None = None, comm: Any = None) -> Any:
    """Return the sum of ``value`` over all MPI ranks (host side, not traced).

    Parameters
    ----------
    value : np.ndarray | jax.Array | float | int
        Value given by each MPI rank, of the same shape on every rank.
    root : int, optional
        Rank that receives the sum. By default every rank receives it; with a
        root, the other ranks receive None.
    comm : MPI.Intracomm (default = MPI.COMM_WORLD)
        Communicator over whose ranks the values are summed.

    Returns
    -------
    np.ndarray | jax.Array | float | int
        The sum, of the same kind as ``value``: scalars stay scalars, numpy
        arrays stay numpy arrays and JAX arrays stay JAX arrays.
    """
    comm = default_comm(comm)
    if root is not None and not (isinstance(root, (int, np.integer)) and 0 <= root < comm.size):
        raise ValueError(f"root must be a rank of comm (0 <= root < {comm.size}), got {root!r}")
    is_jax = isinstance(value, jax.Array)
    arr = np.ascontiguousarray(np.asarray(value))
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"value must be numeric, got dtype {arr.dtype}")
    out = np.empty_like(arr)
    if root is None:
        comm.Allreduce(arr, out, op=MPI.SUM)
    else:
        comm.Reduce(arr, out, op=MPI.SUM, root=root)
        if comm.rank != root:
            return None
    if is_jax:
        return jnp.asarray(out)
    if np.ndim(value) == 0 and not isinstance(value, np.ndarray):
        return out.item()
    return out


def split_subcomms(
    num_groups: int | None = None,
    ranks_per_group: list[int] | None = None,
    comm: Any = None,
) -> tuple[MPI.Comm, int, int]:
    """Split ``comm`` into sub-communicators of contiguous ranks.

    Parameters
    ----------
    num_groups : int, optional
        Number of groups, dividing the ranks as evenly as possible.
    ranks_per_group : list[int], optional
        Number of ranks in each group; must add up to ``comm.size``.
    comm : MPI.Comm, optional
        Communicator to split (default ``MPI.COMM_WORLD``).

    Returns
    -------
    subcomm : MPI.Comm
        The sub-communicator of this rank's group.
    num_groups : int
        The number of groups.
    group_rank : int
        The index of this rank's group (``0 <= group_rank < num_groups``).
    """
    comm = default_comm(comm)
    if num_groups is None and ranks_per_group is None:
        raise ValueError("split_subcomms needs num_groups or ranks_per_group")
    if num_groups is not None:
        if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)):
            raise TypeError(f"num_groups must be an int, got {type(num_groups).__name__}")
        if not 1 <= num_groups <= comm.size:
            raise ValueError(
                f"num_groups must be between 1 and the number of ranks ({comm.size}), got {num_groups}"
            )
    if ranks_per_group is None:
        sizes = [len(block) for block in np.array_split(np.arange(comm.size), num_groups)]
    else:
        sizes = [int(n) for n in ranks_per_group]
        if any(n < 1 for n in sizes):
            raise ValueError(f"every entry of ranks_per_group must be >= 1, got {list(ranks_per_group)}")
        if sum(sizes) != comm.size:
            raise ValueError(
                f"ranks_per_group must add up to the number of ranks ({comm.size}), "
                f"got {list(ranks_per_group)} (sum {sum(sizes)})"
            )
        if num_groups is not None and num_groups != len(sizes):
            raise ValueError(
                f"num_groups={num_groups} contradicts ranks_per_group, which has {len(sizes)} groups"
            )
    group_rank = int(np.searchsorted(np.cumsum(sizes), comm.rank, side="right"))
    subcomm = comm.Split(color=group_rank, key=comm.rank)
    return subcomm, len(sizes), group_rank


def split_subcomms_by_node(comm: Any = None) -> tuple[MPI.Comm, int, int]:
    """Split ``comm`` into one sub-communicator per compute node.

    Parameters
    ----------
    comm : MPI.Comm, optional
        Communicator to split (default ``MPI.COMM_WORLD``).

    Returns
    -------
    subcomm : MPI.Comm
        The sub-communicator of the ranks sharing this rank's node.
    num_groups : int
        The number of nodes.
    group_rank : int
        The index of this rank's node (``0 <= group_rank < num_groups``).
    """
    comm = default_comm(comm)
    subcomm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    leader = subcomm.bcast(comm.rank, root=0)
    leaders = sorted(set(comm.allgather(leader)))
    return subcomm, len(leaders), leaders.index(leader)


def bcast(value: Any, root: int = 0, comm: Any = None) -> Any:
    """Broadcast a picklable host value from ``root`` (no-op on one rank)."""
    comm = default_comm(comm)
    return value if comm.size == 1 else comm.bcast(value, root=root)


def allgather(value: Any, comm: Any = None) -> list:
    """Gather a picklable host value from every rank onto every rank."""
    comm = default_comm(comm)
    return [value] if comm.size == 1 else comm.allgather(value)


def rank(comm: Any = None) -> int:
    return default_comm(comm).rank


def size(comm: Any = None) -> int:
    return default_comm(comm).size


# --- a failing rank ends the job ----------------------------------------------

_ABORT_HOOK_INSTALLED = False


def abort_job(exc: BaseException | None = None) -> None:
    """Print the exception once, tagged with this rank, and abort all ranks."""
    world = MPI.COMM_WORLD
    if exc is not None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(f"[diffopt] rank {world.rank} of {world.size} raised:\n{text}")
        sys.stderr.flush()
    world.Abort(1)


def install_abort_on_error() -> None:
    """Make an uncaught exception on any rank abort every rank of the job.

    Without this, ranks that did not raise wait forever in their next
    collective. Installed when diffopt is imported by a job of more than one
    rank; set ``DIFFOPT_NO_ABORT=1`` to leave ``sys.excepthook`` alone.
    """
    global _ABORT_HOOK_INSTALLED
    if _ABORT_HOOK_INSTALLED or MPI.COMM_WORLD.size == 1 or os.environ.get("DIFFOPT_NO_ABORT"):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            abort_job()
        abort_job(exc)

    sys.excepthook = hook
    # JAX logs a failing callback's traceback, and the exception it raises
    # carries the same text: printed by the hook, it is shown once.
    for name in ("jax._src.callback", "jax._src.debugging"):
        logging.getLogger(name).addFilter(_drop_callback_failure_logs)
    _ABORT_HOOK_INSTALLED = True


def _drop_callback_failure_logs(record: logging.LogRecord) -> bool:
    return not (record.exc_info and str(record.msg).endswith("callback failed"))


def check_replicated(value: Any, name: str, comm: Any = None) -> None:
    """Raise ``ValueError`` on every rank unless ``value`` is identical on all ranks.

    ``value`` is an array (compared bit for bit) or a string. One
    ``allgather`` of a checksum.
    """
    comm = default_comm(comm)
    if comm.size == 1:
        return
    data = value.encode() if isinstance(value, str) else np.ascontiguousarray(value).tobytes()
    digests = comm.allgather(zlib.crc32(data))
    if len(set(digests)) > 1:
        others = [r for r, d in enumerate(digests) if d != digests[0]]
        shown = value if isinstance(value, str) else np.array2string(np.asarray(value), threshold=10)
        raise ValueError(
            f"{name} differs between MPI ranks: rank(s) {others} hold other values than rank 0 "
            f"(this is rank {comm.rank}, with {shown}); it must be identical on every rank"
        )


# --- one rank per GPU ------------------------------------------------------------


def map_ranks_to_gpus(comm: Any = None, num_gpus: int | None = None) -> _gpus.GpuPlan | None:
    """Give each rank the GPU of its node-local rank (see :func:`diffopt._gpus.plan_gpus`).

    Run by every rank when diffopt is imported by a job of more than one rank
    (a collective over ``comm``, default ``MPI.COMM_WORLD``), unless
    ``DIFFOPT_NO_GPU_MAPPING`` is set. ``num_gpus`` defaults to the number of
    GPUs counted on this rank's node. Returns the plan, or None when there
    was nothing to decide.
    """
    comm = default_comm(comm)
    if comm.size == 1 or _gpus.opted_out(os.environ):
        return None
    node_comm, _, _ = split_subcomms_by_node(comm)
    local_rank, local_size = node_comm.rank, node_comm.size
    node_comm.Free()
    if num_gpus is None:
        num_gpus = _gpus.count_gpus()
    plan = _gpus.plan_gpus(local_rank, local_size, num_gpus, os.environ, _gpus.jax_visible_devices())
    _gpus.apply_gpu_plan(plan)
    return plan


# Any multi-rank job that imports diffopt ends as a whole when one rank raises,
# and its ranks share out the GPUs of their node (before JAX starts using one).
install_abort_on_error()
map_ranks_to_gpus()
