"""Posterior sampling with NUTS and HMC (blackjax's kernels), across MPI ranks.

:func:`nuts` and :func:`hmc` sample any traceable log-density in one compiled
loop: Stan's windowed warm-up, several chains with ``jax.vmap``, bounds
through a change of variables with its log-Jacobian, a progress bar,
checkpoints, and diagnostics. With the data split across ranks (a
``multigrad`` model's ``run_nuts``, or a log-density built with
:func:`diffopt.replicate` and :func:`diffopt.sum_over_ranks`), every rank
holds the same chains.
"""

from ._adaptation import AdaptationState
from ._sampler import SampleInfo, SampleResult, SamplerAlgorithm, SamplerState, hmc, nuts

__all__ = [
    "AdaptationState",
    "SampleInfo",
    "SampleResult",
    "SamplerAlgorithm",
    "SamplerState",
    "hmc",
    "nuts",
]
