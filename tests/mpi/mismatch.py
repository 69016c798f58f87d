"""Under mpiexec (2 or 3 ranks): what must match across ranks is checked, on every rank.

Rank 1 breaks the rule in each case: sumstats of another shape or dtype, a
guess or key of its own, a swarm or pretrainer seeded differently. Every rank
must raise the expected error (none may hang or carry on), and then the ranks
go on to the next case together.
Usage: mismatch.py NRANKS
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from diffopt import kdescent, multigrad, multiswarm

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
odd = comm.rank == 1


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params, randkey=None):
        stats = jnp.stack([params[0], params[1] ** 2]) * self.aux_data["scale"]
        if self.aux_data["extra"] and odd:
            stats = jnp.concatenate([stats, stats[:1]])
        return stats.astype(jnp.float16) if self.aux_data["half"] and odd else stats

    def calc_loss_from_sumstats(self, sumstats, randkey=None):
        return jnp.sum((sumstats.astype(jnp.float32) - 1.0) ** 2)


def model(extra=False, half=False):
    return Model(aux_data={"scale": jnp.float32(comm.rank + 1), "extra": extra, "half": half})


guess = jnp.array([0.5, 0.7])
own_guess = guess + 0.1 if odd else guess
data = np.random.default_rng(0).normal(size=(300, 2))
cases = {
    "sumstats shape, compiled call": (
        lambda: jax.block_until_ready(model(extra=True).calc_loss_and_grad_from_params(guess)),
        "sumstats differ in shape or dtype across MPI ranks",
    ),
    "sumstats shape, run_adam": (
        lambda: model(extra=True).run_adam(guess, nsteps=3, progress=False),
        r"sumstats differ in shape or dtype across MPI ranks \(rank 0: float32\(2,\); rank 1: float32\(3,\)",
    ),
    "sumstats shape, run_simple_grad_descent": (
        lambda: model(extra=True).run_simple_grad_descent(guess, nsteps=3, progress=False),
        r"sumstats differ in shape or dtype across MPI ranks \(rank 0: float32\(2,\); rank 1: float32\(3,\)",
    ),
    "sumstats dtype, run_bfgs": (
        lambda: model(half=True).run_bfgs(guess, maxsteps=3, progress=False),
        "rank 1: float16",
    ),
    "guess, run_adam": (
        lambda: model().run_adam(own_guess, nsteps=3, progress=False),
        r"guess differs between MPI ranks: rank\(s\) \[1\]",
    ),
    "guess, run_bfgs": (
        lambda: model().run_bfgs(own_guess, maxsteps=3, progress=False),
        "guess differs between MPI ranks",
    ),
    "randkey, run_adam": (
        lambda: model().run_adam(guess, nsteps=3, randkey=7 + odd, progress=False),
        "randkey differs between MPI ranks",
    ),
    "guess, kdescent.adam": (
        lambda: kdescent.adam(lambda p, k: jnp.sum(p**2), own_guess, nsteps=3, progress=False),
        "guess differs between MPI ranks",
    ),
    "swarm seed": (
        lambda: multiswarm.ParticleSwarm(8, 2, -1, 1, seed=int(odd)).run_pso(
            lambda x: jnp.sum(x**2), nsteps=2, progress=False),
        r"the swarm's start \(x_init and v_init, drawn from seed\) differs between MPI ranks",
    ),
    "pretrainer data": (
        lambda: kdescent.KPretrainer.from_training_data(data + odd, num_pretrain_kernels=50, comm=comm),
        "training_x .* differ across MPI ranks",
    ),
}

import re  # noqa: E402

for name, (call, pattern) in cases.items():
    try:
        call()
        outcome = "no error"
    except Exception as exc:  # every rank must land here, with the message
        outcome = f"{type(exc).__name__}: {exc}"
    outcomes = comm.allgather(outcome)
    for rank, text in enumerate(outcomes):
        assert re.search(pattern, text), f"{name}: rank {rank} got {text[:600]!r}"
    kinds = {text.split(":")[0] for text in outcomes}
    if name.endswith("compiled call"):
        assert kinds <= {"JaxRuntimeError", "ValueError"}, (name, kinds)
    else:  # checked on the host, before anything is compiled
        assert kinds == {"ValueError"}, (name, kinds)
    if comm.rank == 0:
        print(f"{name}: every rank raised", flush=True)

# After all that, a consistent model still fits on every rank alike.
final = model().run_adam(guess, nsteps=20, progress=False)[0][-1]
assert len(set(comm.allgather(np.asarray(final).tobytes()))) == 1
if comm.rank == 0:
    print(f"mismatch: OK on {comm.size} ranks", flush=True)
