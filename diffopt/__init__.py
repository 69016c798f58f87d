"""diffopt: exact, MPI-parallel optimisation of differentiable JAX models."""

from . import kdescent, multigrad, multiswarm, optim
from ._comm import replicate, sum_over_ranks

__version__ = "0.1.0"
__all__ = ["kdescent", "multigrad", "multiswarm", "optim", "replicate", "sum_over_ranks"]
