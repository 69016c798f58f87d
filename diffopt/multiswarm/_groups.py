"""Which ranks evaluate which particles."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _comm


def get_subcomm(
    nparticles: int,
    ranks_per_particle: int | None = None,
    comm: Any = None,
    return_particles_on_this_rank: bool = False,
):
    """Split the ranks into groups, each evaluating its own share of the particles.

    Parameters
    ----------
    nparticles : int
        Number of particles.
    ranks_per_particle : int, optional
        Ranks per group; must divide the number of ranks. By default every
        rank is a group of its own, unless there are fewer particles than
        ranks: then the ranks form ``nparticles`` groups of (nearly) equal
        size, so that no rank is idle.
    comm : MPI.Intracomm, optional
        Communicator to split (default ``MPI.COMM_WORLD``).
    return_particles_on_this_rank : bool (default=False)
        Also return the indices of the particles this rank's group evaluates.

    Returns
    -------
    subcomm : MPI.Intracomm
        The communicator of this rank's group (a loss that is itself parallel
        runs on it).
    particles_on_this_rank : np.ndarray
        Only with ``return_particles_on_this_rank``: the particles of this
        rank's group, a contiguous range of indices.
    """
    subcomm, num_groups, group_rank = split_into_groups(nparticles, ranks_per_particle, comm)
    if not return_particles_on_this_rank:
        return subcomm
    return subcomm, particles_of_group(nparticles, num_groups, group_rank)


def split_into_groups(nparticles: int, ranks_per_particle: int | None, comm: Any):
    """``(subcomm, num_groups, group_rank)`` of the grouping :func:`get_subcomm` describes."""
    comm = _comm.default_comm(comm)
    nranks = comm.size
    if ranks_per_particle is None:
        num_groups = min(nranks, nparticles)
    else:
        if nranks % ranks_per_particle:
            raise ValueError(
                f"ranks_per_particle={ranks_per_particle} must divide the number of "
                f"MPI ranks ({nranks})"
            )
        num_groups = nranks // ranks_per_particle
    subcomm, num_groups, group_rank = _comm.split_subcomms(num_groups=num_groups, comm=comm)
    return _comm.default_comm(subcomm), num_groups, group_rank


def particles_of_group(nparticles: int, num_groups: int, group_rank: int) -> np.ndarray:
    """The contiguous block of particle indices that group ``group_rank`` evaluates."""
    return np.array_split(np.arange(nparticles), num_groups)[group_rank]
