"""Under mpiexec: NUTS and HMC on a multigrad model with its data split unevenly over the ranks.

Usage: sample_chains.py NRANKS OUT.npz [CHECKPOINT]

A straight-line fit with Gaussian noise, ``loss = chi2 / 2``, a Gaussian prior
on the intercept; the last rank holds no data. Every configuration (NUTS and
HMC, with and without bounds, 1 and 2 chains) must give bit-identical chains
on every rank (gathered and compared). Rank 0 saves them to OUT.npz, so that
the pytest test can compare 1 and 3 ranks. With CHECKPOINT, only one longer
NUTS run is made, checkpointed, and it prints how many times the log-density
was evaluated (for the kill-and-resume test; SAMPLE_SLOW=1 slows each
evaluation down so that the job can be killed part-way).
"""

import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multigrad  # noqa: E402

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"
out_path = sys.argv[2]
checkpoint = sys.argv[3] if len(sys.argv) > 3 else None
SLOW = checkpoint is not None and os.environ.get("SAMPLE_SLOW") == "1"


evaluations = [0]


def count_evaluation():
    evaluations[0] += 1
    if SLOW:  # so that the kill-and-resume test can kill the job part-way
        time.sleep(0.002)


class Line(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        x, y = self.aux_data["x"], self.aux_data["y"]
        if checkpoint is not None:
            jax.debug.callback(count_evaluation)
        return jnp.sum(((y - params[0] - params[1] * x) / 0.3) ** 2)

    def calc_loss_from_sumstats(self, sumstats):
        return 0.5 * sumstats


def log_prior(params):
    return -0.5 * (params[0] / 2.0) ** 2


rng = np.random.default_rng(4)
x = np.linspace(-1, 2, 40)
y = 0.7 + 1.3 * x + 0.3 * rng.normal(size=x.size)
cuts = [0, *np.linspace(0, 40, comm.size).astype(int)[1:], 40] if comm.size > 1 else [0, 40]
mine = slice(cuts[comm.rank], cuts[comm.rank + 1])  # the last rank's slice is empty
model = Line(aux_data={"x": jnp.asarray(x[mine]), "y": jnp.asarray(y[mine])})
guess = jnp.array([0.5, 1.0])


def identical_everywhere(name, arrays):
    blob = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    assert len(set(comm.allgather(blob))) == 1, f"{name}: the chains differ between ranks"


if checkpoint is not None:
    result = model.run_nuts(guess, nsamples=300, nwarmup=100, nchains=2, randkey=5, log_prior=log_prior,
                            progress=False, checkpoint=checkpoint, checkpoint_every=20)
    identical_everywhere("checkpointed", [result.samples, result.logdensity])
    if comm.rank == 0:
        np.savez(out_path, samples=np.asarray(result.samples), logdensity=np.asarray(result.logdensity))
        print(f"log-density evaluations: {evaluations[0]}", flush=True)
    sys.exit(0)

# Together: NUTS and HMC, with and without bounds, one and two chains.
runs = {
    "nuts_2chains_bounded": lambda: model.run_nuts(
        guess, nsamples=20, nwarmup=20, nchains=2, randkey=2, log_prior=log_prior,
        param_bounds=[(-1.0, 3.0), (0.0, None)], progress=False),
    "hmc": lambda: model.run_hmc(guess, nsamples=20, nwarmup=20, randkey=3, log_prior=log_prior,
                                 num_integration_steps=8, progress=False),
}
saved = {}
for name, run in runs.items():
    result = run()
    nchains = 2 if "2chains" in name else 1
    assert result.samples.shape == (nchains, 20, 2), (name, result.samples.shape)
    assert result.logdensity.shape == (nchains, 20) and np.all(np.isfinite(result.logdensity)), name
    if "bounded" in name:
        assert np.all(np.asarray(result.samples)[..., 1] > 0.0), name
    identical_everywhere(name, [result.samples, result.logdensity, result.info.step_size])
    saved[name] = np.asarray(result.samples)
    saved[name + "_logdensity"] = np.asarray(result.logdensity)
if comm.rank == 0:
    np.savez(out_path, **saved)
    print(f"sample chains: identical on all {comm.size} ranks", flush=True)
