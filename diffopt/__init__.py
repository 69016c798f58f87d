"""diffopt: exact, MPI-parallel optimisation of differentiable JAX models."""

from . import kdescent, multigrad, multiswarm, optim

__version__ = "0.1.0"
__all__ = ["kdescent", "multigrad", "multiswarm", "optim"]
