"""A fit on three ranks in which rank 1's data make the model raise.

    mpiexec -n 3 python docs/scripts/failing_rank.py

Without diffopt's handling, ranks 0 and 2 would wait forever for rank 1 in
the sum over ranks. With it, the job ends at once and shows rank 1's error.
"""

import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from diffopt import multigrad


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        x = self.aux_data
        if x.size == 0:
            raise ValueError(f"rank {MPI.COMM_WORLD.rank} loaded no data")
        return jnp.stack([jnp.sum(x - params[0]), jnp.sum((x - params[0]) ** 2)])

    def calc_loss_from_sumstats(self, sumstats):
        return sumstats[1] - sumstats[0] ** 2


# A data file that is empty on rank 1.
data = np.array_split(np.arange(10.0), [4, 4])[MPI.COMM_WORLD.rank]
model = Model(aux_data=jnp.asarray(data))
model.run_adam(jnp.array([1.0]), nsteps=100, progress=False)
print(f"rank {MPI.COMM_WORLD.rank}: done")  # never reached
