"""A particle swarm whose loss is itself parallel: pairs of ranks evaluate each particle together.

    mpiexec -n 4 python docs/scripts/swarm_per_particle.py

With ``ranks_per_particle=2`` the ranks pair up: the pairs share out the
particles, and within a pair each rank holds half of the points of a LineFit
model on the pair's sub-communicator. Every rank checks that the swarm moved
exactly as the same swarm does in one process holding all the points, and
rank 0 saves both runs to swarm.npz.
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from diffopt import multiswarm  # noqa: E402
from line_model import LineFit, survey  # noqa: E402

points = survey(num_points=200, noise=0.5, seed=0)
settings = dict(nparticles=20, ndim=2, xlow=[-5.0, -5.0], xhigh=[5.0, 5.0], seed=3)

swarm = multiswarm.ParticleSwarm(**settings, ranks_per_particle=2)
x, y, sigma = (np.array_split(column, swarm.subcomm.size)[swarm.subcomm.rank] for column in points)
model = LineFit(aux_data=(jnp.asarray(x), jnp.asarray(y), jnp.asarray(sigma)), comm=swarm.subcomm)


# Both ranks of a pair call this for the same particle: the sum inside is over
# the pair. It is called once per particle, so compile it.
lossfunc = jax.jit(model.calc_loss_from_params)


parallel = swarm.run_pso(lossfunc, nsteps=30, progress=False)

# The same swarm in one process (MPI.COMM_SELF) holding all the points.
alone = LineFit(aux_data=tuple(map(jnp.asarray, points)), comm=MPI.COMM_SELF)
serial = multiswarm.ParticleSwarm(**settings, comm=MPI.COMM_SELF).run_pso(
    alone.calc_loss_from_params, nsteps=30, progress=False)
for name in ("swarm_x_history", "swarm_loss_history"):
    np.testing.assert_allclose(parallel[name], serial[name], rtol=1e-10, err_msg=name)

best_loss, best_params = multiswarm.get_best_loss_and_params(
    parallel["swarm_loss_history"], parallel["swarm_x_history"])
if MPI.COMM_WORLD.rank == 0:
    print(f"{MPI.COMM_WORLD.size} ranks, {swarm.num_groups} pairs: best chi-square {best_loss:.6f} "
          f"at a, b = {best_params}, as in one process")
    np.savez("swarm.npz", parallel=parallel["swarm_loss_history"], serial=serial["swarm_loss_history"])
