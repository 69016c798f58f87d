"""Bad input to every public entry point: one row per case, each a clear error naming the argument."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffopt import kdescent, multigrad, multiswarm, optim


class Quadratic(multigrad.OnePointModel):
    def calc_partial_sumstats_from_params(self, params):
        return jnp.stack([params[0], params[1] ** 2, params[0] * params[1]])

    def calc_loss_from_sumstats(self, sumstats):
        return jnp.sum((sumstats - self.aux_data) ** 2)


def model():
    return Quadratic(aux_data=jnp.array([0.5, 0.25, 0.25]))


def loss_and_grad(params, randkey):
    return jax.value_and_grad(lambda p: jnp.sum(p**2))(params)


def kloss(params, randkey):
    return jnp.sum(params**2)


def sphere(x):
    return jnp.sum(x**2)


GUESS = jnp.array([0.1, 0.2])
X = np.random.default_rng(0).normal(size=(50, 2))
SWARM = dict(nparticles=10, ndim=2, xlow=-1.0, xhigh=1.0)


@functools.cache
def kcalc():
    return kdescent.KCalc(kdescent.KPretrainer.from_training_data(X, num_pretrain_kernels=40,
                                                                   num_pretrain_fourier_positions=40))


def pretrain(x=X, weights=None, **kwargs):
    return kdescent.KPretrainer.from_training_data(x, weights, **kwargs)


def swarm(**change):
    return multiswarm.ParticleSwarm(**{**SWARM, **change})


def run_pso(**kwargs):
    return swarm().run_pso(**{"lossfunc": sphere, "nsteps": 2, "progress": False, **kwargs})


def with_nan_row(x):
    x = x.copy()
    x[[3, 7], 1] = np.nan
    return x


def short_x_init():
    s = swarm()
    s.x_init = s.x_init[:5]
    return s.run_pso(sphere, nsteps=2, progress=False)


def adam(**kwargs):
    return model().run_adam(**{"guess": GUESS, "nsteps": 2, "progress": False, **kwargs})


# (id, call, exception, pattern the message must match)
CASES = [
    # --- multigrad models: fits ------------------------------------------------------------------
    ("adam nsteps negative", lambda: adam(nsteps=-1), ValueError, "nsteps must be >= 0"),
    ("adam nsteps float", lambda: adam(nsteps=2.5), TypeError, "nsteps must be an int"),
    ("adam nsteps bool", lambda: adam(nsteps=True), TypeError, "nsteps must be an int"),
    ("adam thin negative", lambda: adam(thin=-1), ValueError, "thin must be >= 0"),
    ("adam thin float", lambda: adam(thin=1.5), TypeError, "thin must be an int"),
    ("adam learning_rate zero", lambda: adam(learning_rate=0), ValueError, "learning_rate must be positive"),
    ("adam learning_rate negative", lambda: adam(learning_rate=-0.1), ValueError, "learning_rate"),
    ("adam learning_rate NaN", lambda: adam(learning_rate=float("nan")), ValueError, "learning_rate"),
    ("adam learning_rate str", lambda: adam(learning_rate="0.1"), TypeError, "learning_rate"),
    ("adam randkey str", lambda: adam(randkey="a"), TypeError, "randkey must be None, an int seed"),
    ("adam randkey float", lambda: adam(randkey=1.5), TypeError, "randkey"),
    ("adam randkey batch of keys", lambda: adam(randkey=jax.random.split(jax.random.key(0))),
     TypeError, "randkey"),
    ("adam guess NaN", lambda: adam(guess=jnp.array([0.0, jnp.nan])), ValueError,
     "guess must be finite; parameter 1 is nan"),
    ("adam guess inf", lambda: adam(guess=jnp.array([jnp.inf, 0.0])), ValueError, "guess must be finite"),
    ("adam guess empty", lambda: adam(guess=jnp.zeros(0)), ValueError, "guess is empty"),
    ("adam guess strings", lambda: adam(guess=np.array(["a", "b"])), TypeError,
     "guess must be an array .* of real numbers"),
    ("adam guess complex", lambda: adam(guess=jnp.array([1j, 0.0])), TypeError, "guess"),
    ("adam guess outside bounds", lambda: adam(param_bounds=[None, (1, 2)]), ValueError,
     r"guess\[1\] = 0.2.* must lie strictly inside param_bounds\[1\]"),
    ("adam guess on a bound", lambda: adam(guess=jnp.array([0.5, 0.25]), param_bounds=[(0.5, 1), None]),
     ValueError, r"guess\[0\] = 0.5 must lie strictly inside"),
    ("adam bounds too few rows", lambda: adam(param_bounds=[(0, 1)]), ValueError,
     "param_bounds must have one .* row per parameter: expected 2 rows, got 1"),
    ("adam bounds row of 3", lambda: adam(param_bounds=[(0, 1, 2), None]), ValueError,
     r"param_bounds\[0\] must be \(lower, upper\)"),
    ("adam bounds lower above upper", lambda: adam(param_bounds=[None, (1, 0)]), ValueError,
     r"param_bounds\[1\]: lower bound 1.0 must be below upper bound 0.0"),
    ("adam bounds equal", lambda: adam(param_bounds=[(0.5, 0.5), None]), ValueError, "must be below"),
    ("adam bounds NaN", lambda: adam(param_bounds=[None, (0, float("nan"))]), ValueError,
     r"param_bounds\[1\]\[1\] is NaN"),
    ("adam bounds str", lambda: adam(param_bounds=[None, ("a", 1)]), TypeError,
     r"param_bounds\[1\]\[0\] must be a number"),
    ("adam optimizer str", lambda: adam(optimizer="adam"), TypeError,
     "optimizer must be an optax.GradientTransformation"),
    ("adam checkpoint int", lambda: adam(checkpoint=3), TypeError, "checkpoint must be a file path"),
    ("adam checkpoint_every zero", lambda: adam(checkpoint_every=0), ValueError, "checkpoint_every"),
    ("bfgs maxsteps negative", lambda: model().run_bfgs(GUESS, maxsteps=-3), ValueError,
     "maxsteps must be >= 0"),
    ("bfgs maxsteps float", lambda: model().run_bfgs(GUESS, maxsteps=10.0), TypeError, "maxsteps"),
    ("bfgs guess outside bounds", lambda: model().run_bfgs(GUESS, param_bounds=[(0.5, 1), None]),
     ValueError, r"guess\[0\]"),
    ("grad descent learning_rate", lambda: model().run_simple_grad_descent(GUESS, learning_rate=-1),
     ValueError, "learning_rate"),
    ("grad descent nsteps", lambda: model().run_simple_grad_descent(GUESS, nsteps="10"), TypeError,
     "nsteps"),
    # --- multigrad models: evaluation and set-up ---------------------------------------------------
    ("loss params strings", lambda: model().calc_loss_from_params("ab"), TypeError,
     "params must be an array"),
    ("loss randkey list", lambda: model().calc_loss_from_params(GUESS, randkey=[1, 2]), TypeError,
     "randkey"),
    ("model comm str", lambda: Quadratic(comm="world"), TypeError, "comm must be an mpi4py"),
    ("group of non-models", lambda: multigrad.OnePointGroup((model(), "model")), TypeError,
     r"models\[1\] must be a OnePointModel"),
    ("split_subcomms nothing", lambda: multigrad.split_subcomms(), ValueError, "num_groups or ranks_per_group"),
    ("split_subcomms too many groups", lambda: multigrad.split_subcomms(num_groups=2), ValueError,
     "num_groups must be between 1 and"),
    ("split_subcomms sizes", lambda: multigrad.split_subcomms(ranks_per_group=[2]), ValueError, "add up"),
    ("split_subcomms zero group", lambda: multigrad.split_subcomms(num_groups=1, ranks_per_group=[1, 0]),
     ValueError, ">= 1"),
    ("split_subcomms str", lambda: multigrad.split_subcomms(num_groups="1"), TypeError,
     "num_groups must be an int"),
    ("reduce_sum root", lambda: multigrad.reduce_sum(1.0, root=3), ValueError, "root must be a rank"),
    ("reduce_sum strings", lambda: multigrad.reduce_sum(np.array(["a"])), TypeError, "value must be numeric"),
    # --- optim -------------------------------------------------------------------------------------
    ("fit optimizer", lambda: optim.fit(loss_and_grad, GUESS, None, 3), TypeError, "optimizer"),
    ("fit nsteps", lambda: optim.fit(loss_and_grad, GUESS, optax.adam(0.1), -2), ValueError, "nsteps"),
    ("scipy_bfgs thin", lambda: optim.scipy_bfgs(loss_and_grad, GUESS, thin=-2), ValueError, "thin"),
    ("scipy_bfgs guess NaN", lambda: optim.scipy_bfgs(loss_and_grad, jnp.array([jnp.nan])), ValueError,
     "guess must be finite"),
    ("lhs xmins above xmaxs", lambda: optim.latin_hypercube(1.0, 0.0, 2, 5), ValueError,
     r"xmins\[0\] = 1.0 must be finite and below xmaxs\[0\]"),
    ("lhs num_evaluations", lambda: optim.latin_hypercube(0.0, 1.0, 2, 0), ValueError, "num_evaluations"),
    # --- kdescent fits -------------------------------------------------------------------------------
    ("kdescent adam learning_rate", lambda: kdescent.adam(kloss, GUESS, learning_rate=-1.0, progress=False),
     ValueError, "learning_rate"),
    ("kdescent adam nsteps", lambda: kdescent.adam(kloss, GUESS, nsteps=-5, progress=False), ValueError,
     "nsteps"),
    ("kdescent adam randkey", lambda: kdescent.adam(kloss, GUESS, randkey="seed", progress=False), TypeError,
     "randkey"),
    ("kdescent adam bounds", lambda: kdescent.adam(kloss, GUESS, param_bounds=[(1, 0), None], progress=False),
     ValueError, r"param_bounds\[0\]"),
    ("kdescent bfgs maxsteps", lambda: kdescent.bfgs(kloss, GUESS, maxsteps=-1, progress=False), ValueError,
     "maxsteps"),
    ("kdescent bfgs guess inf", lambda: kdescent.bfgs(kloss, jnp.array([jnp.inf]), progress=False),
     ValueError, "guess must be finite"),
    # --- KPretrainer ------------------------------------------------------------------------------------
    ("pretrainer empty data", lambda: pretrain(np.zeros((0, 2))), ValueError, "training_x is empty"),
    ("pretrainer NaN rows", lambda: pretrain(with_nan_row(X)), ValueError,
     r"training_x contains NaN.*2 row\(s\).*\[3, 7\]"),
    ("pretrainer 3-D data", lambda: pretrain(np.zeros((5, 2, 2))), ValueError,
     r"training_x must have shape \(n_points, n_dims\)"),
    ("pretrainer data str", lambda: pretrain("not data"), TypeError, "training_x"),
    ("pretrainer weights length", lambda: pretrain(X, np.ones(49)), ValueError,
     r"training_weights must have shape \(50,\)"),
    ("pretrainer weights negative", lambda: pretrain(X, -np.ones(50)), ValueError,
     "training_weights must be >= 0"),
    ("pretrainer weights NaN", lambda: pretrain(X, np.full(50, np.nan)), ValueError,
     "training_weights contains NaN"),
    ("pretrainer weights zero", lambda: pretrain(X, np.zeros(50)), ValueError, "training_weights sum to zero"),
    ("pretrainer num_eval_kernels zero", lambda: pretrain(num_eval_kernels=0), ValueError,
     "num_eval_kernels must be >= 1"),
    ("pretrainer num_pretrain_kernels float", lambda: pretrain(num_pretrain_kernels=2.5), TypeError,
     "num_pretrain_kernels must be an int"),
    ("pretrainer fewer pretrained than drawn", lambda: pretrain(num_pretrain_kernels=10, num_eval_kernels=20),
     ValueError, r"num_pretrain_kernels \(10\) must be >= num_eval_kernels \(20\)"),
    ("pretrainer fewer pretrained positions than drawn",
     lambda: pretrain(num_pretrain_fourier_positions=5, num_eval_fourier_positions=6), ValueError,
     r"num_pretrain_fourier_positions \(5\) must be >= num_eval_fourier_positions \(6\)"),
    ("pretrainer chunk_size", lambda: pretrain(chunk_size=0), ValueError, "chunk_size must be >= 1"),
    ("pretrainer bandwidth_factor", lambda: pretrain(bandwidth_factor=0.0), ValueError,
     "bandwidth_factor must be > 0"),
    ("pretrainer fourier_range_factor", lambda: pretrain(fourier_range_factor=-1), ValueError,
     "fourier_range_factor must be > 0"),
    ("pretrainer idw power", lambda: pretrain(inverse_density_weight_power=-1), ValueError,
     "inverse_density_weight_power must be >= 0"),
    ("pretrainer constant column", lambda: pretrain(np.column_stack([X[:, 0], np.ones(50)])), ValueError,
     "zero variance along dimension"),
    ("pretrainer one point", lambda: pretrain(X[:1]), ValueError, "at least two points"),
    ("pretrainer singular covariance", lambda: pretrain(np.column_stack([X[:, 0], 2 * X[:, 0]]),
                                                        covariant_kernels=True),
     ValueError, "covariance of training_x is singular"),
    ("pretrainer seed str", lambda: pretrain(seed="zero"), TypeError, "seed must be an int"),
    ("pretrainer comm str", lambda: pretrain(comm="world"), TypeError, "comm"),
    # --- KCalc -------------------------------------------------------------------------------------------
    ("kcalc of raw data", lambda: kdescent.KCalc(X), TypeError, "pretrainer must be a KPretrainer"),
    ("kcalc chunk_size", lambda: kdescent.KCalc(kcalc().pretrainer, chunk_size=0), ValueError, "chunk_size"),
    ("kcalc x of other dimension", lambda: kcalc().compare_kde_counts(0, jnp.zeros((10, 3))), ValueError,
     r"x has 3 dimensions.*2-dimensional"),
    ("kcalc x 3-D", lambda: kcalc().compare_fourier_counts(0, jnp.zeros((10, 2, 1))), ValueError,
     r"x must have shape \(n_points, 2\)"),
    ("kcalc weights length", lambda: kcalc().compare_kde_counts(0, jnp.zeros((10, 2)), jnp.ones(9)),
     ValueError, r"weights must have shape \(10,\)"),
    ("kcalc weights negative", lambda: kcalc().compare_kde_counts(0, jnp.zeros((10, 2)), -jnp.ones(10)),
     ValueError, "weights must be >= 0"),
    ("kcalc randkey str", lambda: kcalc().compare_kde_counts("key", jnp.zeros((10, 2))), TypeError,
     "randkey"),
    ("kcalc randkey missing", lambda: kcalc().compare_fourier_counts(None, jnp.zeros((10, 2))), TypeError,
     "randkey is required"),
    # --- multiswarm ------------------------------------------------------------------------------------
    ("pso nparticles zero", lambda: swarm(nparticles=0), ValueError, "nparticles must be >= 1"),
    ("pso nparticles float", lambda: swarm(nparticles=2.5), TypeError, "nparticles must be an int"),
    ("pso ndim zero", lambda: swarm(ndim=0), ValueError, "ndim"),
    ("pso ndim str", lambda: swarm(ndim="2"), TypeError, "ndim"),
    ("pso xlow above xhigh", lambda: swarm(xlow=1.0), ValueError, "xlow must be below xhigh"),
    ("pso xlow above xhigh in one dim", lambda: swarm(xlow=[-1.0, 2.0]), ValueError, r"dimension\(s\) \[1\]"),
    ("pso xlow wrong length", lambda: swarm(xlow=[-1.0, -1.0, -1.0]), ValueError,
     r"xlow must be a number or an array of shape \(ndim,\)"),
    ("pso xhigh 2-D", lambda: swarm(xhigh=np.ones((2, 2))), ValueError, "xhigh must be"),
    ("pso xhigh inf", lambda: swarm(xhigh=np.inf), ValueError, "xhigh must be finite"),
    ("pso xlow NaN", lambda: swarm(xlow=np.nan), ValueError, "xlow must be finite"),
    ("pso xlow str", lambda: swarm(xlow="low"), TypeError, "xlow"),
    ("pso inertial_weight", lambda: swarm(inertial_weight=-0.1), ValueError, "inertial_weight"),
    ("pso cognitive_weight", lambda: swarm(cognitive_weight=-1), ValueError, "cognitive_weight"),
    ("pso social_weight NaN", lambda: swarm(social_weight=np.nan), ValueError, "social_weight"),
    ("pso vmax_frac negative", lambda: swarm(vmax_frac=-0.4), ValueError, "vmax_frac"),
    ("pso vmax_frac zero", lambda: swarm(vmax_frac=0), ValueError, "vmax_frac must be > 0"),
    ("pso ranks_per_particle zero", lambda: swarm(ranks_per_particle=0), ValueError, "ranks_per_particle"),
    ("pso ranks_per_particle too many", lambda: swarm(ranks_per_particle=2), ValueError,
     "ranks_per_particle=2 must divide"),
    ("pso ranks_per_particle float", lambda: swarm(ranks_per_particle=1.0), TypeError, "ranks_per_particle"),
    ("pso seed str", lambda: swarm(seed="zero"), TypeError, "seed"),
    ("pso comm str", lambda: swarm(comm="world"), TypeError, "comm"),
    ("pso lossfunc not callable", lambda: run_pso(lossfunc=3), TypeError, "lossfunc must be callable"),
    ("pso lossfunc not scalar", lambda: run_pso(lossfunc=lambda x: x), ValueError, "lossfunc must return a scalar"),
    ("pso nsteps zero", lambda: run_pso(nsteps=0), ValueError, "nsteps must be >= 1"),
    ("pso checkpoint_every zero", lambda: run_pso(checkpoint_every=0), ValueError, "checkpoint_every"),
    ("pso checkpoint int", lambda: run_pso(checkpoint=5), TypeError, "checkpoint must be a file path"),
    ("pso vectorize str", lambda: run_pso(vectorize="yes"), TypeError, "vectorize"),
    ("pso x_init shape", short_x_init, ValueError, r"x_init must have shape \(nparticles, ndim\)"),
    ("pso best of mismatched histories",
     lambda: multiswarm.get_best_loss_and_params(np.zeros((2, 2)), np.zeros((1, 2, 2))), ValueError,
     "params_history"),
]


def test_the_table_is_large_and_ids_are_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 30 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("call, error, pattern", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_raises_a_clear_error(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
