"""A small fit that keeps its compiled programs in ./jax-cache. Run it twice:

    python docs/scripts/compilation_cache.py
    python docs/scripts/compilation_cache.py

The first run compiles its programs and writes them to the cache; the second
reads every one of them back and compiles none (it checks that it did).
"""

import os

import jax
import jax.numpy as jnp
import optax

import diffopt
from diffopt import optim

was_filled = os.path.isdir("jax-cache") and any(os.scandir("jax-cache"))
diffopt.enable_compilation_cache("jax-cache")

# Count what JAX does with each program it needs: compile it, or read it back.
counts = {"needed": 0, "read back": 0}
events = {"/jax/compilation_cache/compile_requests_use_cache": "needed",
          "/jax/compilation_cache/cache_hits": "read back"}


def count(event, **kwargs):
    if event in events:
        counts[events[event]] += 1


jax.monitoring.register_event_listener(count)

data = 1.5 + 0.7 * jax.random.normal(jax.random.key(0), (5_000,))


def loss_and_grad(params, randkey):
    def nll(params):
        mu, log_sigma = params
        return jnp.mean(0.5 * ((data - mu) / jnp.exp(log_sigma)) ** 2 + log_sigma)

    return jax.value_and_grad(nll)(params)


result = optim.fit(loss_and_grad, jnp.array([0.0, 0.0]), optax.adam(0.05), nsteps=300, progress=False)
print(f"fit: mu = {result.params[-1, 0]:.3f}, sigma = {jnp.exp(result.params[-1, 1]):.3f}")
compiled = counts["needed"] - counts["read back"]
print(f"{counts['needed']} programs: {compiled} compiled, {counts['read back']} read from the cache")
if was_filled:
    assert compiled == 0, "the second run should compile nothing"
