"""Bounds: the change of variables is the documented map, invertible, and a fit starts at its guess."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffopt import optim

INF = np.inf
LOWER = np.array([0.0, 0.0, -INF, -INF])
UPPER = np.array([1.0, INF, 1.0, INF])


def test_reparam_is_the_documented_map_and_its_inverse():
    with jax.enable_x64(True):
        reparam = optim.Reparam(jnp.asarray(LOWER), jnp.asarray(UPPER))
        z = jnp.array([-1.3, 0.4, 2.2, -0.7])
        p = np.asarray(reparam.to_params(z))
        softplus = np.log1p(np.exp(np.asarray(z)))
        # docs/bounds.md: a + (b - a) sigmoid(z), a + softplus(z), b - softplus(z), z.
        expected = [1 / (1 + np.exp(1.3)), softplus[1], 1.0 - softplus[2], -0.7]
        np.testing.assert_allclose(p, expected, rtol=1e-14, atol=0)
        np.testing.assert_allclose(np.asarray(reparam.from_params(jnp.asarray(p))), z, rtol=1e-12)


def test_a_bounded_fit_starts_at_its_guess_and_stays_inside():
    def loss_and_grad(params, randkey):
        return jax.value_and_grad(lambda p: jnp.sum((p - jnp.array([2.0, -1.0, 3.0, 0.5])) ** 2))(params)

    with jax.enable_x64(True):
        guess = jnp.array([0.3, 0.2, 0.1, 0.4])
        result = optim.fit(loss_and_grad, guess, optax.adam(0.1), 200, param_bounds=list(zip(LOWER, UPPER)),
                           progress=False)
        params = np.asarray(result.params)
        np.testing.assert_allclose(params[0], guess, rtol=1e-14)
        assert np.all(params > LOWER) and np.all(params < UPPER)
        # Optima beyond a bound are approached from inside; the others reached.
        np.testing.assert_allclose(params[-1, [1, 3]], [0.0, 0.5], atol=2e-2)
        assert params[-1, 0] > 0.95 and params[-1, 2] > 0.95
