"""Gradient-free particle swarm optimisation with the particles spread over MPI ranks."""

from ._groups import get_subcomm
from ._results import get_best_loss_and_params
from ._swarm import ParticleSwarm
from ._update import SwarmState

__all__ = ["ParticleSwarm", "SwarmState", "get_best_loss_and_params", "get_subcomm"]
