"""diffopt: exact, MPI-parallel optimisation of differentiable JAX models."""

from . import kdescent, multigrad, multiswarm, optim
from ._cache import enable_compilation_cache

__version__ = "0.1.0"
__all__ = ["enable_compilation_cache", "kdescent", "multigrad", "multiswarm", "optim"]
