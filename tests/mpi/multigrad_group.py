"""Under mpiexec (3 or 4 ranks): two models on two sub-communicators, summed.

Usage: multigrad_group.py NRANKS
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from mpi4py import MPI

from diffopt import multigrad

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        x = self.aux_data["x"]
        return jnp.stack([jnp.sum(jnp.exp(-params[0] * x**2)), jnp.sum(jnp.cos(params[1] * x))])

    def calc_loss_from_sumstats(self, sumstats):
        return jnp.sum((sumstats - self.aux_data["target"]) ** 2)


data = [np.linspace(-1, 1, 11), np.linspace(0, 2, 7)]
targets = [jnp.array([5.0, 4.0]), jnp.array([3.0, 1.0])]
subcomm, num_groups, group_rank = multigrad.split_subcomms(num_groups=2)
assert num_groups == 2
mine = np.array_split(data[group_rank], subcomm.size)[subcomm.rank]
group = multigrad.OnePointGroup(
    Model(aux_data={"x": jnp.asarray(mine), "target": targets[group_rank]}, comm=subcomm)
)
whole = [Model(aux_data={"x": jnp.asarray(d), "target": t}, comm=MPI.COMM_SELF) for d, t in zip(data, targets)]

p = jnp.array([0.7, 1.3])
loss, grad = group.calc_loss_and_grad_from_params(p)
want_loss = sum(m.calc_loss_from_params(p) for m in whole)
want_grad = sum(m.calc_dloss_dparams(p) for m in whole)
want_hess = sum(jax.hessian(m.calc_loss_from_params)(p) for m in whole)
hess = jax.hessian(group.calc_loss_from_params)(p)
ok = (np.allclose(loss, want_loss, rtol=1e-12) and np.allclose(grad, want_grad, rtol=1e-12)
      and np.allclose(hess, want_hess, rtol=1e-12))
assert comm.allreduce(ok, op=MPI.LAND), (rank := comm.rank, loss, want_loss, grad, want_grad)

# The run_* methods work on a group and agree on every rank.
hist, _ = group.run_adam(p, nsteps=50, learning_rate=0.01, progress=False)
_, _, res = group.run_bfgs(p, maxsteps=20, progress=False)
assert comm.allreduce(len({np.asarray(hist).tobytes()} ^ set(comm.allgather(np.asarray(hist).tobytes()))), op=MPI.SUM) == 0
assert len(set(comm.allgather(res.x.tobytes()))) == 1
# One sub-communicator per compute node: all of this job's ranks share one node.
node_comm, num_nodes, node = multigrad.split_subcomms_by_node()
assert (num_nodes, node, node_comm.size, node_comm.rank) == (1, 0, comm.size, comm.rank)
# Of a sub-communicator: the node's ranks within it.
node_comm, num_nodes, node = multigrad.split_subcomms_by_node(subcomm)
assert (num_nodes, node, node_comm.size, node_comm.rank) == (1, 0, subcomm.size, subcomm.rank)
assert node_comm.allreduce(group_rank) == group_rank * subcomm.size  # only its group's ranks
if comm.rank == 0:
    print("group: OK")
