"""Under mpiexec: a log-density written by hand with the public primitives is exact.

Usage: primitives.py NRANKS

A Gaussian-mixture log-likelihood of data split unevenly over the ranks (the
last rank holds none), built with ``diffopt.replicate`` and
``diffopt.sum_over_ranks`` only. Its value, ``jax.grad`` and ``jax.hessian``
(plain and jitted) must equal the single-process values on all the data, on
every rank.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

import diffopt  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"

data = np.random.default_rng(0).normal(1.0, 2.0, 50)
cuts = np.linspace(0, 50, comm.size + 1).astype(int)
cuts[-2] = cuts[-1] if comm.size > 1 else cuts[-2]  # the last rank holds no data
local = data[cuts[comm.rank]:cuts[comm.rank + 1]]


def loglike(params, x, comm):
    params = diffopt.replicate(params, comm)
    mu, log_sigma, frac = params["mu"], params["log_sigma"], jax.nn.sigmoid(params["logit"])
    narrow = jax.scipy.stats.norm.logpdf(x, mu, jnp.exp(log_sigma))
    wide = jax.scipy.stats.norm.logpdf(x, mu, 3 * jnp.exp(log_sigma))
    partial = jnp.stack([jnp.sum(jnp.logaddexp(jnp.log(frac) + narrow, jnp.log1p(-frac) + wide)),
                         jnp.sum(x**2) * mu])
    total = diffopt.sum_over_ranks(partial, comm)
    return total[0] - 1e-3 * total[1] ** 2


params = {"mu": jnp.float64(0.7), "log_sigma": jnp.float64(0.4), "logit": jnp.float64(0.3)}
split = lambda p: loglike(p, jnp.asarray(local), comm)  # noqa: E731
whole = lambda p: loglike(p, jnp.asarray(data), MPI.COMM_SELF)  # noqa: E731

for name, fn in [("value", lambda f: f), ("grad", jax.grad), ("hessian", jax.hessian),
                 ("jit(grad)", lambda f: jax.jit(jax.grad(f))), ("jit(hessian)", lambda f: jax.jit(jax.hessian(f)))]:
    got = jax.tree_util.tree_leaves(fn(split)(params))
    want = jax.tree_util.tree_leaves(fn(whole)(params))
    ok = all(np.allclose(g, w, rtol=1e-12, atol=1e-12) for g, w in zip(got, want))
    assert comm.allreduce(ok, op=MPI.LAND), f"{name} differs from one process on rank {comm.rank}: {got} vs {want}"
    blobs = comm.allgather(b"".join(np.asarray(g).tobytes() for g in got))
    assert len(set(blobs)) == 1, f"{name}: ranks disagree"
if comm.rank == 0:
    print(f"primitives: OK on {comm.size} ranks", flush=True)
