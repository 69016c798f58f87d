"""Under mpiexec: the sampler's bad input is refused on every rank alike.

Usage: sample_bad_input.py NRANKS

Keys or guesses that differ between ranks, and a loss that is NaN at the
guess (one rank's data hold a NaN), must raise on every rank with the same
message before any warm-up, and leave no rank waiting: afterwards a clean
run still samples on every rank.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
last = comm.rank == comm.size - 1


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        return jnp.sum((self.aux_data - params[0]) ** 2) * jnp.exp(-params[1])

    def calc_loss_from_sumstats(self, sumstats):
        return 0.5 * sumstats


data = np.array_split(np.linspace(-1, 1, 30), comm.size)[comm.rank]
model = Model(aux_data=jnp.asarray(data))
broken = Model(aux_data=jnp.asarray(np.where(np.arange(data.size) == 0, np.nan, data) if last else data))
guess = jnp.array([0.1, 0.2])
cases = {
    "randkey": (lambda: model.run_nuts(guess, 5, nwarmup=5, randkey=3 + last, progress=False),
                ValueError, "randkey differs between MPI ranks"),
    "guess": (lambda: model.run_nuts(guess + 0.1 * last, 5, nwarmup=5, progress=False),
              ValueError, "guess differs between MPI ranks"),
    "NaN loss at the guess": (lambda: broken.run_nuts(guess, 5, nwarmup=5, progress=False),
                              ValueError, "not finite at the guess"),
}
for name, (run, error, pattern) in cases.items():
    try:
        run()
        message = None
    except error as exc:
        message = str(exc)
    everyone = comm.allgather(message)
    assert all(m is not None and pattern in m for m in everyone), f"{name}: {everyone}"
    if comm.rank == 0:
        print(f"{name}: every rank raised: {everyone[0][:80]}", flush=True)

result = model.run_nuts(guess, 5, nwarmup=5, progress=False)
assert len(set(comm.allgather(np.asarray(result.samples).tobytes()))) == 1
if comm.rank == 0:
    print(f"sample bad input: OK on {comm.size} ranks", flush=True)
