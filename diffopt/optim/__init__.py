"""The optimisation layer shared by multigrad, kdescent and multiswarm.

Every iterative algorithm is a state ``NamedTuple`` with a pure ``init`` and
``step`` (for fits, :func:`fit_algorithm`); one driver runs any of them in
compiled chunks, with a progress bar, checkpoints and a stop on non-finite
values.
"""

from ._bfgs import scipy_bfgs
from ._bounds import Reparam, parse_bounds
from ._checks import NonFiniteGuessError
from ._fit import FitAlgorithm, FitInfo, FitResult, FitState, fit, fit_algorithm
from ._lhs import latin_hypercube, lhs_param_scan

__all__ = [
    "FitAlgorithm",
    "FitInfo",
    "FitResult",
    "FitState",
    "NonFiniteGuessError",
    "Reparam",
    "fit",
    "fit_algorithm",
    "latin_hypercube",
    "lhs_param_scan",
    "parse_bounds",
    "scipy_bfgs",
]
