"""multigrad: exact gradients of losses of statistics summed over MPI ranks."""

from .._comm import reduce_sum, split_subcomms, split_subcomms_by_node
from ._fitting import GradientDescentResult
from ._group import OnePointGroup
from ._model import OnePointModel

__all__ = [
    "GradientDescentResult",
    "OnePointGroup",
    "OnePointModel",
    "reduce_sum",
    "split_subcomms",
    "split_subcomms_by_node",
]
