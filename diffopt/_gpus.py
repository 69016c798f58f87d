"""One rank per GPU: which GPU each MPI rank of a node uses, decided without MPI.

:mod:`diffopt._comm` finds each rank's place on its node (with
``split_subcomms_by_node``) when diffopt is imported by a job of several
ranks, and hands it here. The decision, :func:`plan_gpus`, is a pure function
of that place, the number of GPUs on the node and the environment, so that it
can be tested on a machine without GPUs.

The GPU is chosen with JAX's ``jax_cuda_visible_devices`` option (as
``jax.distributed.initialize(local_device_ids=...)`` does) rather than by
setting ``CUDA_VISIBLE_DEVICES``: CUDA reads that variable once, when it is
first initialised, and a CUDA-aware MPI may already have done so in
``MPI_Init``; JAX's option acts whenever JAX creates its GPU backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from typing import NamedTuple

OPT_OUT = "DIFFOPT_NO_GPU_MAPPING"
# Any of these says how XLA should use GPU memory: diffopt then leaves it alone.
MEMORY_SETTINGS = (
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
)


class GpuPlan(NamedTuple):
    """What one rank does about GPUs.

    Attributes
    ----------
    device : int or None
        The CUDA device (of the node's GPUs, numbered from 0) that JAX may
        use on this rank; None leaves JAX's choice alone.
    environ : dict[str, str]
        Environment variables to set before JAX creates its backend (the
        memory policy when several ranks share a GPU).
    reason : str
        Why, in words.
    """

    device: int | None
    environ: dict[str, str]
    reason: str


def opted_out(environ: Mapping[str, str]) -> bool:
    """Whether ``DIFFOPT_NO_GPU_MAPPING`` asks diffopt to leave GPUs alone."""
    return environ.get(OPT_OUT, "") not in ("", "0")


def count_gpus(proc_dir: str = "/proc/driver/nvidia/gpus", nvidia_smi: str = "nvidia-smi") -> int:
    """The number of NVIDIA GPUs on this node, counted without initialising CUDA.

    The NVIDIA driver lists one folder per GPU in ``proc_dir``; where that
    folder does not exist, ``nvidia-smi -L`` lists them. Without either, or
    when they fail, the count is 0.
    """
    try:
        return len(os.listdir(proc_dir))
    except OSError:
        pass
    executable = shutil.which(nvidia_smi)
    if executable is None:
        return 0
    try:
        listing = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listing.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def plan_gpus(
    local_rank: int,
    local_size: int,
    num_gpus: int,
    environ: Mapping[str, str],
    jax_visible_devices: str = "all",
) -> GpuPlan:
    """Decide which GPU rank ``local_rank`` of the ``local_size`` ranks of a node uses.

    Parameters
    ----------
    local_rank, local_size : int
        This rank's index among the ranks on its node, and their number.
    num_gpus : int
        The number of GPUs on the node (:func:`count_gpus`).
    environ : Mapping[str, str]
        The environment (``os.environ``).
    jax_visible_devices : str
        The value of JAX's ``jax_cuda_visible_devices`` option ("all" unless
        someone set it).

    Returns
    -------
    GpuPlan
        Rank ``local_rank`` uses GPU ``local_rank % num_gpus``. Nothing is
        chosen when ``DIFFOPT_NO_GPU_MAPPING`` is set (to anything but "" or
        "0"), when the node has no GPU, when one rank has the node to itself,
        or when ``CUDA_VISIBLE_DEVICES`` (set by the user or the scheduler) or
        JAX's option already says which GPUs to use. When more ranks than
        GPUs share the node, and no memory setting of XLA is given, JAX's
        preallocation of most of each GPU's memory is turned off
        (``XLA_PYTHON_CLIENT_PREALLOCATE=false``), so that the ranks sharing a
        GPU do not run out of memory.
    """
    if opted_out(environ):
        return GpuPlan(None, {}, f"{OPT_OUT} is set")
    if num_gpus < 1:
        return GpuPlan(None, {}, "no GPU on this node")
    if local_size < 2:
        return GpuPlan(None, {}, "one rank on this node: it may use every GPU")
    if "CUDA_VISIBLE_DEVICES" in environ:
        return GpuPlan(None, {}, f"CUDA_VISIBLE_DEVICES is set ({environ['CUDA_VISIBLE_DEVICES']!r})")
    if jax_visible_devices != "all":
        return GpuPlan(None, {}, f"jax_cuda_visible_devices is set ({jax_visible_devices!r})")
    device = local_rank % num_gpus
    sharing = -(-local_size // num_gpus)  # the most ranks on one GPU
    reason = f"rank {local_rank} of {local_size} on a node with {num_gpus} GPU(s)"
    environ_out = {}
    if sharing > 1 and not any(name in environ for name in MEMORY_SETTINGS):
        environ_out["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        reason += f", up to {sharing} ranks per GPU: no preallocation"
    return GpuPlan(device, environ_out, reason)


def jax_visible_devices() -> str:
    """The value of JAX's ``jax_cuda_visible_devices`` option ("all" if it cannot be read)."""
    import jax

    try:
        return str(jax.config._read("jax_cuda_visible_devices"))
    except (AttributeError, KeyError):
        return "all"


def jax_backend_initialized() -> bool:
    """Whether JAX has created its backends (after which the GPU choice is fixed)."""
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def apply_gpu_plan(plan: GpuPlan) -> bool:
    """Make ``plan`` take effect: JAX's visible device and the environment.

    Only possible before JAX creates its backend. If it already has, nothing
    changes and a warning says so (once per process). Returns whether the
    plan took effect.
    """
    if plan.device is None and not plan.environ:
        return True
    if jax_backend_initialized():
        warnings.warn(
            f"diffopt could not give this MPI rank its own GPU ({plan.reason}) because JAX was "
            "already running when diffopt was imported: import diffopt before any JAX "
            "computation, or set CUDA_VISIBLE_DEVICES for each rank yourself (set "
            f"{OPT_OUT}=1 to silence this)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    import jax

    os.environ.update(plan.environ)
    if plan.device is not None:
        jax.config.update("jax_cuda_visible_devices", str(plan.device))
    return True
