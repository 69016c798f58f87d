"""A straight-line fit whose chi-square is a sum over data points, and its data."""

import jax.numpy as jnp
import numpy as np

from diffopt import multigrad


class LineFit(multigrad.OnePointModel):
    """Chi-square of ``y = a + b x`` against points ``(x, y)`` with errors ``sigma``."""

    def calc_partial_sumstats_from_params(self, params):
        a, b = params
        x, y, sigma = self.aux_data
        return jnp.sum(((y - a - b * x) / sigma) ** 2)

    def calc_loss_from_sumstats(self, chisq):
        return chisq


def survey(num_points, noise, seed):
    """``(x, y, sigma)`` of a survey of the line ``y = 1 + 0.5 x`` (the same on every rank)."""
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 10.0, num_points))
    sigma = np.full(num_points, noise)
    return x, 1.0 + 0.5 * x + sigma * rng.normal(size=num_points), sigma
