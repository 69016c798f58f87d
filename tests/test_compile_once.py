"""Compile once per problem: another nsteps, guess, key or rebuilt optimiser compiles nothing (issue 15)."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import optax
import pytest

from diffopt import kdescent, multigrad, optim


@contextlib.contextmanager
def compilations():
    """Count the XLA compilations that happen inside the block."""
    count = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            count.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params, randkey=None):
        noise = 0.0 if randkey is None else 1e-3 * jax.random.normal(randkey)
        return jnp.stack([jnp.sum(self.aux_data * params[0]), jnp.sum(self.aux_data**2) * params[1] ** 2 + noise])

    def calc_loss_from_sumstats(self, sumstats, randkey=None):
        return jnp.sum((sumstats - jnp.array([1.0, 2.0])) ** 2)


def noisy_loss(params, randkey):
    return jnp.sum((params - 1.0 - 0.01 * jax.random.normal(randkey, params.shape)) ** 2)


def loss_and_grad(params, randkey):
    return jax.value_and_grad(noisy_loss)(params, randkey)


# A new data size per test, so that each test's first call has to compile.
MODELS = iter(Model(aux_data=jnp.linspace(0.0, 1.0, 20 + i)) for i in range(100))
MODEL = None
FITS = {
    "run_adam": lambda n, guess, key, rate: MODEL.run_adam(
        guess, nsteps=n, randkey=key, optimizer=optax.adam(rate), progress=False),
    "run_adam(learning_rate)": lambda n, guess, key, rate: MODEL.run_adam(
        guess, nsteps=n, randkey=key, learning_rate=rate, progress=False),
    "run_adam(bounds)": lambda n, guess, key, rate: MODEL.run_adam(
        guess, nsteps=n, randkey=key, param_bounds=[(-1.0, 2.0), None], optimizer=optax.adam(rate),
        progress=False),
    "run_adam(chain)": lambda n, guess, key, rate: MODEL.run_adam(
        guess, nsteps=n, optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(rate, momentum=0.9)),
        progress=False),
    "run_simple_grad_descent": lambda n, guess, key, rate: MODEL.run_simple_grad_descent(
        guess, nsteps=n, learning_rate=rate / 10, progress=False),
    "run_bfgs": lambda n, guess, key, rate: MODEL.run_bfgs(guess, maxsteps=n, progress=False),
    "kdescent.adam": lambda n, guess, key, rate: kdescent.adam(
        noisy_loss, guess, nsteps=n, randkey=key, learning_rate=rate, progress=False),
    "kdescent.bfgs": lambda n, guess, key, rate: kdescent.bfgs(
        noisy_loss, guess, maxsteps=n, randkey=key, progress=False),
    "optim.fit": lambda n, guess, key, rate: optim.fit(
        loss_and_grad, guess, optax.adamw(rate), n, randkey=key, progress=False),
}


@pytest.mark.parametrize("name", list(FITS))
def test_second_call_of_a_problem_compiles_nothing(name, monkeypatch):
    monkeypatch.setitem(globals(), "MODEL", next(MODELS))
    fit = FITS[name]
    with compilations() as first:
        fit(3, jnp.array([0.2, 0.5]), 1, 0.05)
    assert first, "the first call compiled nothing: the counter does not work"
    with compilations() as second:
        fit(40, jnp.array([0.7, 0.1]), 2, 0.05)  # other nsteps, guess, key; optimiser rebuilt
    assert not second, f"{len(second)} compilation(s) on the second call"


def test_other_hyperparameters_compile_again(monkeypatch):
    monkeypatch.setitem(globals(), "MODEL", next(MODELS))
    # The optimiser's hyperparameters are baked into the compiled loop: a
    # genuinely different optimiser must not reuse it.
    MODEL.run_adam(jnp.array([0.2, 0.5]), nsteps=3, optimizer=optax.adam(0.05), progress=False)
    with compilations() as count:
        MODEL.run_adam(jnp.array([0.2, 0.5]), nsteps=3, optimizer=optax.adam(0.07), progress=False)
    assert count


def test_sampler_second_call_compiles_nothing():
    from diffopt import sample

    def logdensity(p):
        return -0.5 * jnp.sum((p - jnp.array([1.0, -1.0])) ** 2 / jnp.array([1.0, 4.0]))

    sample.nuts(logdensity, jnp.zeros(2), 30, nwarmup=10, nchains=2, randkey=1, progress=False)
    with compilations() as count:
        # Another warm-up length, key and start: the same compiled sampler.
        sample.nuts(logdensity, jnp.ones(2), 30, nwarmup=40, nchains=2, randkey=2, progress=False)
    assert not count, f"{len(count)} compilation(s) on the second call"
    with compilations() as count:
        # Another number of draws: only blackjax's R-hat and ESS, for the new shape.
        sample.nuts(logdensity, jnp.ones(2), 50, nwarmup=40, nchains=2, randkey=2, progress=False)
    assert len(count) == 1, f"{len(count)} compilation(s) on the third call"
