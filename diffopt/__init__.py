"""diffopt: exact, MPI-parallel optimisation of differentiable JAX models."""
