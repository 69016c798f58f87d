"""Parameters as one flat vector, with a hashable description of their pytree.

``jax.flatten_util.ravel_pytree`` returns a new closure at every call, which
as a static argument of a compiled loop would force a recompile per fit. A
``FlatSpec`` compares equal for equal structures, so compiled code is reused.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FlatSpec(NamedTuple):
    treedef: Any
    shapes: tuple
    dtypes: tuple


def flatten(tree) -> tuple[jax.Array, FlatSpec]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [jnp.asarray(x) for x in leaves]
    spec = FlatSpec(treedef, tuple(x.shape for x in leaves), tuple(x.dtype for x in leaves))
    if not leaves:
        return jnp.zeros(0), spec
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return jnp.concatenate([x.ravel().astype(dtype) for x in leaves]), spec


def unflatten(flat: jax.Array, spec: FlatSpec):
    sizes = [int(np.prod(s)) for s in spec.shapes]
    parts = jnp.split(flat, np.cumsum(sizes)[:-1]) if sizes else []
    leaves = [p.reshape(s) for p, s in zip(parts, spec.shapes)]
    return jax.tree_util.tree_unflatten(spec.treedef, leaves)


def flatten_like(tree, dtype) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves]) if leaves else jnp.zeros(0, dtype)


def unflatten_rows(rows: np.ndarray, spec: FlatSpec, like_array: bool):
    """Flat vectors stacked on leading axes (a host array) as device arrays shaped like the guess.

    ``rows`` has shape ``(*lead, n)``; each leaf comes back with shape
    ``(*lead, *leaf_shape)``. Done with NumPy and ``jax.device_put``: ``jnp``
    operations on arrays whose length is the number of steps would compile
    something for every new ``nsteps``.
    """
    lead = rows.shape[:-1]
    sizes = [int(np.prod(s)) for s in spec.shapes]
    parts = np.split(rows, np.cumsum(sizes)[:-1], axis=-1) if sizes else []
    leaves = [jax.device_put(np.asarray(p, dtype).reshape((*lead, *s)))
              for p, s, dtype in zip(parts, spec.shapes, spec.dtypes)]
    if like_array:
        return leaves[0]
    return jax.tree_util.tree_unflatten(spec.treedef, leaves)


def kept_rows(nrows: int, thin: int):
    """Which rows a history keeps: every ``thin``-th and the last; only the last (unstacked) if ``thin`` is 0."""
    if thin == 0:
        return nrows - 1
    keep = np.arange(0, nrows, thin)
    return keep if keep[-1] == nrows - 1 else np.append(keep, nrows - 1)
