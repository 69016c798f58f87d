"""kdescent: differentiable, stochastic distribution matching.

A :class:`KPretrainer` measures kernel-weighted counts (a mini-batched KDE)
and empirical characteristic function values of the training data once; a
:class:`KCalc` compares random subsets of them with the same statistics of a
model sample, differentiably. :func:`adam` and :func:`bfgs` fit a loss built
from them (thin conveniences over :mod:`diffopt.optim`).
"""

from ._fit import adam, bfgs
from ._kcalc import KCalc
from ._pretrainer import KPretrainer

__all__ = ["KCalc", "KPretrainer", "adam", "bfgs"]
