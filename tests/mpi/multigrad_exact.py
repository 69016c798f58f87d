"""Under mpiexec: loss, gradient, Hessian and jacfwd on N ranks equal one process.

Usage: multigrad_exact.py NRANKS [MAX_EXAMPLES]

Hypothesis draws the data and how it is split (even, uneven, empty ranks).
Explicit examples come first: data on every rank, evenly and unevenly split,
and parameters away from zero, where every statistic and every derivative
is non-trivial (a drawn ``a = 0`` zeroes two of the three statistics' ``a``
terms, and a rank without data adds nothing). Every rank runs the same
derandomized examples, and the pass/fail of each example is agreed over all
ranks, so a failure on one rank fails all of them instead of leaving the
others waiting.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, example, given, settings, strategies as st
from mpi4py import MPI

from diffopt import multigrad

comm = MPI.COMM_WORLD
assert comm.size == int(sys.argv[1]), f"expected {sys.argv[1]} ranks, running on {comm.size}"


class Model(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        # Data are padded to a fixed length (weight 0) so each shape compiles once.
        x, w = self.aux_data["x"], self.aux_data["w"]
        a, b = params["a"], params["b"]
        return jnp.stack([
            jnp.sum(w * jnp.exp(-b * (x - a) ** 2)),
            jnp.sum(w * jnp.sin(a * x) * b**2),
            jnp.sum(w * x**2) * a,
        ])

    def calc_loss_from_sumstats(self, sumstats):
        target = self.aux_data["target"]
        return jnp.sum((jnp.log1p(sumstats**2) - target) ** 2) + sumstats[0] * sumstats[1]


@jax.jit
def user_step(model, params):
    return jax.value_and_grad(model.calc_loss_from_params)(params)


@jax.jit
def user_hessian(model, params):
    return jax.hessian(model.calc_loss_from_params)(params)


def padded(x, size=12):
    return {"x": jnp.zeros(size).at[: len(x)].set(x), "w": (jnp.arange(size) < len(x)) * 1.0}


def agree(ok: bool, what: str):
    if not comm.allreduce(bool(ok), op=MPI.LAND):
        raise AssertionError(f"{what} differs from the single-process value (rank {comm.rank}: ok={ok})")


def check_close(name, got, want):
    ok = all(
        np.allclose(g, w, rtol=1e-12, atol=1e-12)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want))
    )
    agree(ok, name)


def cuts_giving(*counts):
    """The cuts that give the ranks ``counts`` points (the last rank the rest)."""
    return [int(c) for c in np.cumsum(counts[: comm.size - 1])]


EVEN = np.linspace(-2.5, 2.8, 12).tolist()
UNEVEN = [0.3, -1.7, 2.2, 0.9, -0.4, 1.5, -2.9]


@settings(max_examples=int(sys.argv[2]) if len(sys.argv) > 2 else 5, deadline=None,
          derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(
    x=st.lists(st.floats(-3, 3, allow_nan=False), min_size=0, max_size=12),
    cuts=st.lists(st.integers(0, 12), min_size=comm.size - 1, max_size=comm.size - 1),
    a=st.floats(-1, 1), b=st.floats(0.1, 2),
)
@example(x=EVEN, cuts=cuts_giving(4, 4), a=0.7, b=1.3)  # data on every rank, evenly split
@example(x=UNEVEN, cuts=cuts_giving(1, 2), a=-0.45, b=0.35)  # unevenly split
@example(x=EVEN, cuts=cuts_giving(9, 2), a=0.93, b=1.9)
def test_exact(x, cuts, a, b):
    x = np.array(x, dtype=np.float64)
    bounds = [0, *sorted(min(c, len(x)) for c in cuts), len(x)]
    local = x[bounds[comm.rank]:bounds[comm.rank + 1]]
    examples.append(comm.allreduce(len(local) > 0, op=MPI.LAND) and a != 0)
    target = jnp.array([0.3, -0.2, 1.0])
    params = {"a": jnp.float64(a), "b": jnp.float64(b)}
    split = Model(aux_data={**padded(local), "target": target})
    whole = Model(aux_data={**padded(x), "target": target}, comm=MPI.COMM_SELF)

    check_close("sumstats", split.calc_sumstats_from_params(params), whole.calc_sumstats_from_params(params))
    check_close("loss", split.calc_loss_from_params(params), whole.calc_loss_from_params(params))
    check_close("loss and grad", split.calc_loss_and_grad_from_params(params),
                whole.calc_loss_and_grad_from_params(params))
    check_close("dloss", split.calc_dloss_dparams(params), whole.calc_dloss_dparams(params))
    check_close("user jit with model argument", user_step(split, params), user_step(whole, params))
    check_close("jit(hessian) with model argument", user_hessian(split, params), user_hessian(whole, params))
    # Un-jitted forward mode and jit of a bound method (which compiles anew for
    # every model) are slow on oversubscribed ranks: the explicit examples,
    # which run first, check them.
    if len(examples) <= 3:
        check_close("hessian", jax.hessian(split.calc_loss_from_params)(params),
                    jax.hessian(whole.calc_loss_from_params)(params))
        check_close("jacfwd", jax.jacfwd(split.calc_loss_from_params)(params),
                    jax.jacfwd(whole.calc_loss_from_params)(params))
        check_close("jit(hessian)", jax.jit(jax.hessian(split.calc_loss_from_params))(params),
                    jax.hessian(whole.calc_loss_from_params)(params))
        check_close("jit(method)", jax.jit(split.calc_loss_and_grad_from_params)(params),
                    whole.calc_loss_and_grad_from_params(params))


examples = []  # per example run: whether every rank held data and a != 0

if __name__ == "__main__":
    test_exact()
    assert sum(examples) >= 3, f"only {sum(examples)} of {len(examples)} examples had data on every rank"
    # Array params, and aux outputs.
    class AuxModel(Model):
        def calc_partial_sumstats_from_params(self, params):
            stats = super().calc_partial_sumstats_from_params({"a": params[0], "b": params[1]})
            return stats, stats.shape

        def calc_loss_from_sumstats(self, sumstats, sumstats_aux):
            loss = super().calc_loss_from_sumstats(sumstats)
            return loss, sumstats

    x = np.linspace(-2, 2, 7)
    local = np.array_split(x, comm.size)[comm.rank]
    kw = dict(sumstats_func_has_aux=True, loss_func_has_aux=True)
    split = AuxModel(aux_data={**padded(local), "target": jnp.zeros(3)}, **kw)
    whole = AuxModel(aux_data={**padded(x), "target": jnp.zeros(3)}, comm=MPI.COMM_SELF, **kw)
    p = jnp.array([0.2, 0.7])
    (l1, aux1), g1 = split.calc_loss_and_grad_from_params(p)
    (l2, aux2), g2 = whole.calc_loss_and_grad_from_params(p)
    check_close("aux loss and grad", (l1, aux1, g1), (l2, aux2, g2))
    if comm.rank == 0:
        print(f"multigrad exact: OK on {comm.size} ranks ({len(examples)} examples, {sum(examples)} "
              "with data on every rank and a != 0)")
