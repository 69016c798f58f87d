"""The optimisation layer shared by multigrad and kdescent."""

from ._bfgs import scipy_bfgs
from ._bounds import Reparam, parse_bounds
from ._checks import NonFiniteGuessError
from ._fit import FitResult, cached_adam, fit
from ._lhs import latin_hypercube, lhs_param_scan

__all__ = [
    "FitResult",
    "NonFiniteGuessError",
    "Reparam",
    "cached_adam",
    "fit",
    "latin_hypercube",
    "lhs_param_scan",
    "parse_bounds",
    "scipy_bfgs",
]
