"""diffopt: exact, MPI-parallel optimisation of differentiable JAX models."""

from . import kdescent, multigrad, multiswarm, optim, sample
from ._cache import enable_compilation_cache
from ._comm import replicate, sum_over_ranks

__version__ = "0.1.0"
__all__ = [
    "enable_compilation_cache",
    "kdescent",
    "multigrad",
    "multiswarm",
    "optim",
    "replicate",
    "sample",
    "sum_over_ranks",
]
