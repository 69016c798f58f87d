"""The seed's ``run_*`` methods, thin conveniences over :mod:`diffopt.optim` and :mod:`diffopt.sample`."""

from __future__ import annotations

import copy
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import numpy as np
import optax
from jaxtyping import PyTree

from .. import _comm, optim, sample
from .._keys import as_key
from ..optim._checks import check_count, check_guess, check_positive


def with_layout_checked(module):
    """A shallow copy of ``module`` whose sums over ranks skip the in-graph layout check."""
    checked = copy.copy(module)
    # A static field, so compiled code of the copy and the original never mix.
    object.__setattr__(checked, "_layout_checked", True)
    return checked


class GradientDescentResult(NamedTuple):
    """History of :meth:`run_simple_grad_descent`.

    Attributes
    ----------
    loss : array
        Loss at each iteration.
    params : array
        Trial parameters at each iteration: the guess first, the last
        evaluated parameters last.
    aux : Any
        Aux values returned at each iteration (``loss_func_has_aux``), else None.
    """

    loss: jax.Array
    params: PyTree
    aux: Any


class _Posterior(eqx.Module):
    """``log_prior(params) - loss(params)`` of a model (or group): the target of its samplers."""

    model: Any
    log_prior: Callable | None

    def __call__(self, params):
        loss = self.model.calc_loss_from_params(params)
        if getattr(self.model, "loss_func_has_aux", False):
            loss = loss[0]
        return -loss if self.log_prior is None else self.log_prior(params) - loss


class FitMethods(eqx.Module):
    """Optimisers for anything with ``calc_loss_and_grad_from_params`` and ``fit_comm``.

    A fit compares the layout of the partial sumstats across ranks once, on
    the host, and then runs a copy of the model whose compiled steps skip
    that check (see :meth:`_checked`).
    """

    _layout_checked: bool = eqx.field(default=False, static=True, init=False, repr=False)

    def _checked(self, params: PyTree, randkey: Any):
        """A copy for a fit, after checking that sumstats layouts agree across ranks."""
        raise NotImplementedError

    def _for_fit(self, guess: PyTree, randkey: Any = None):
        guess = check_guess(guess)[0]  # a clear error before anything is traced
        return self._checked(guess, as_key(randkey))

    def _loss_and_grad(self, params, randkey):
        return self.calc_loss_and_grad_from_params(params, randkey=randkey)

    def _loss_and_grad_no_aux(self, params, randkey):
        (loss, _), grad = self.calc_loss_and_grad_from_params(params, randkey=randkey)
        return loss, grad

    def _plain_loss_and_grad(self):
        has_aux = getattr(self, "loss_func_has_aux", False)
        return self._loss_and_grad_no_aux if has_aux else self._loss_and_grad

    def run_simple_grad_descent(
        self, guess: PyTree, nsteps: int = 100, learning_rate: float = 0.01, **kwargs
    ) -> GradientDescentResult:
        """Descend the gradient with a fixed learning rate, given an initial guess.

        Stochasticity is not allowed.

        Parameters
        ----------
        guess : array-like
            The starting parameters.
        nsteps : int (default=100)
            The number of iterations: evaluations of the loss and gradient.
        learning_rate : float (default=0.01)
            The fixed learning rate.
        **kwargs
            Passed to :func:`diffopt.optim.fit` (``progress``, ``thin``,
            ``checkpoint``, ...).

        Returns
        -------
        GradientDescentResult
            ``loss``, ``params`` and ``aux`` at each iteration (``nsteps``
            rows: the guess first, each row's loss evaluated at its params;
            the update after the last evaluation is not taken).
        """
        learning_rate = check_positive("learning_rate", learning_rate)
        nsteps = check_count("nsteps", nsteps, minimum=1)
        has_aux = getattr(self, "loss_func_has_aux", False)
        kwargs.setdefault("desc", "Simple Gradient Descent Progress")
        fitted = self._for_fit(guess)
        result = optim.fit(
            fitted._loss_and_grad, guess, optax.sgd(learning_rate), nsteps - 1,
            has_aux=has_aux, comm=self.fit_comm, **kwargs,
        )
        return GradientDescentResult(result.losses, result.params, result.aux)

    def run_adam(
        self,
        guess: PyTree,
        nsteps: int = 100,
        param_bounds: Any = None,
        learning_rate: float = 0.01,
        randkey: Any = None,
        const_randkey: bool = False,
        comm: Any = None,
        *,
        optimizer: optax.GradientTransformation | None = None,
        thin: int = 1,
        progress: bool = True,
        checkpoint: str | None = None,
        checkpoint_every: int = 100,
    ) -> tuple[PyTree, jax.Array]:
        """Run adam (or any optax optimiser) to optimise the parameters.

        The whole loop is compiled. Stochasticity is allowed if randkey is passed.

        Parameters
        ----------
        guess : array-like
            The starting parameters.
        nsteps : int (default=100)
            The number of steps to take.
        param_bounds : Sequence, optional
            Lower and upper bounds of each parameter of "shape" (ndim, 2).
            Pass None as the bound for each unbounded parameter.
        learning_rate : float (default=0.01)
            The adam learning rate.
        randkey : int | PRNG Key (default=None)
            If given, a new PRNG Key will be generated at each iteration and
            be passed to calc_loss_and_grad_from_params() as the "randkey" kwarg.
        const_randkey : bool (default=False)
            Pass the same key at every iteration instead.
        comm : MPI.Comm, optional
            Communicator of the ranks taking part (default: the model's).
        optimizer : optax.GradientTransformation, optional
            Any optax optimiser to use instead of ``optax.adam(learning_rate)``.
        thin : int (default=1)
            Record every ``thin``-th step (the final one always; 0: only the
            final parameters and loss, unstacked).
        progress : bool (default=True)
            Show a progress bar on rank 0.
        checkpoint : str, optional
            Checkpoint path; a rerun with the same path resumes.
        checkpoint_every : int (default=100)
            Steps between checkpoints.

        Returns
        -------
        params : array (or pytree like guess)
            The parameters at every step, stacked on a leading axis: the guess
            first and the final parameters last (``nsteps + 1`` rows before
            thinning).
        losses : array
            The loss at each row of ``params``.
        """
        if optimizer is None:
            optimizer = optax.adam(check_positive("learning_rate", learning_rate))
        fitted = self._for_fit(guess, randkey)
        result = optim.fit(
            fitted._plain_loss_and_grad(), guess, optimizer, nsteps,
            param_bounds=param_bounds, randkey=randkey, const_randkey=const_randkey,
            thin=thin, progress=progress, desc="Adam Gradient Descent Progress",
            comm=comm if comm is not None else self.fit_comm,
            checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        )
        return result.params, result.losses

    def run_bfgs(
        self,
        guess: PyTree,
        maxsteps: int = 100,
        param_bounds: Any = None,
        randkey: Any = None,
        comm: Any = None,
        *,
        progress: bool = True,
    ) -> tuple:
        """Run BFGS (SciPy's L-BFGS-B) to optimise the parameters.

        Stochasticity must be held fixed via a random key.

        Parameters
        ----------
        guess : array-like
            The starting parameters.
        maxsteps : int (default=100)
            The maximum number of iterations.
        param_bounds : Sequence, optional
            Lower and upper bounds of each parameter of "shape" (ndim, 2).
        randkey : int | PRNG Key (default=None)
            Passed to calc_loss_and_grad_from_params() as the "randkey" kwarg,
            the same at every iteration.
        comm : MPI.Comm, optional
            Communicator of the ranks taking part (default: the model's).
        progress : bool (default=True)
            Show a progress bar on rank 0.

        Returns
        -------
        params : array
            Parameters at each iteration.
        losses : array
            Loss at each iteration.
        result : OptimizeResult
            SciPy's result (``message``, ``success``, ``fun``, ``x``, ``jac``,
            ``nfev``, ``nit``), identical on every rank.
        """
        fitted = self._for_fit(guess, randkey)
        return optim.scipy_bfgs(
            fitted._plain_loss_and_grad(), guess, maxsteps, param_bounds=param_bounds,
            randkey=randkey, progress=progress,
            comm=comm if comm is not None else self.fit_comm,
        )

    def run_nuts(
        self,
        guess: PyTree,
        nsamples: int,
        nwarmup: int = 500,
        log_prior: Callable | None = None,
        param_bounds: Any = None,
        randkey: Any = None,
        nchains: int = 1,
        progress: bool = True,
        checkpoint: str | None = None,
        *,
        checkpoint_every: int = 100,
        target_acceptance_rate: float = 0.8,
        dense_mass_matrix: bool = False,
        max_num_doublings: int = 10,
    ) -> sample.SampleResult:
        """Sample the posterior ``exp(log_prior(params) - loss(params))`` with NUTS.

        For a calibrated posterior, write the loss as a negative
        log-likelihood (for example ``0.5 * chi2``): the target log-density
        is ``log_prior(params) - loss(params)``. The loss, summed over MPI
        ranks, and its exact gradient are the same on every rank, so every
        rank holds identical chains. See :func:`diffopt.sample.nuts`.

        Parameters
        ----------
        guess : array-like
            Where every chain starts (the best fit is a good choice).
        nsamples : int
            Draws per chain after warm-up.
        nwarmup : int (default=500)
            Warm-up transitions per chain (step size and mass matrix adapted).
        log_prior : callable, optional
            ``log_prior(params) -> scalar``, traceable. By default a flat
            prior (inside ``param_bounds`` if given).
        param_bounds : Sequence, optional
            Lower and upper bounds of each parameter of "shape" (ndim, 2),
            None for an open side; sampled through a change of variables
            with its log-Jacobian.
        randkey : int | PRNG Key (default=None, i.e. 0)
            Seeds the chains; identical on every rank.
        nchains : int (default=1)
            Chains run side by side (``jax.vmap``) in one compiled loop.
        progress : bool (default=True)
            Show a progress bar on rank 0.
        checkpoint : str, optional
            Checkpoint path; a rerun with the same path resumes.
        checkpoint_every : int (default=100)
            Transitions between checkpoints.
        target_acceptance_rate : float (default=0.8)
            What the step-size adaptation aims at.
        dense_mass_matrix : bool (default=False)
            Adapt a dense inverse mass matrix, for strongly correlated
            parameters.
        max_num_doublings : int (default=10)
            Largest NUTS tree depth.

        Returns
        -------
        SampleResult
            ``(samples, logdensity, info)``; samples of shape ``(nchains,
            nsamples, *guess_shape)``.
        """
        return sample.nuts(
            self._posterior(guess, log_prior), guess, nsamples, nwarmup=nwarmup, nchains=nchains,
            param_bounds=param_bounds, randkey=randkey, progress=progress, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, comm=self.fit_comm,
            target_acceptance_rate=target_acceptance_rate, dense_mass_matrix=dense_mass_matrix,
            max_num_doublings=max_num_doublings,
        )

    def run_hmc(
        self,
        guess: PyTree,
        nsamples: int,
        nwarmup: int = 500,
        log_prior: Callable | None = None,
        param_bounds: Any = None,
        randkey: Any = None,
        nchains: int = 1,
        progress: bool = True,
        checkpoint: str | None = None,
        *,
        num_integration_steps: int = 16,
        checkpoint_every: int = 100,
        target_acceptance_rate: float = 0.8,
        dense_mass_matrix: bool = False,
    ) -> sample.SampleResult:
        """Sample the posterior ``exp(log_prior(params) - loss(params))`` with HMC.

        As :meth:`run_nuts`, with a fixed number of leapfrog steps per
        transition (``num_integration_steps``); see :func:`diffopt.sample.hmc`.
        """
        return sample.hmc(
            self._posterior(guess, log_prior), guess, nsamples, num_integration_steps=num_integration_steps,
            nwarmup=nwarmup, nchains=nchains, param_bounds=param_bounds, randkey=randkey,
            progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
            comm=self.fit_comm, target_acceptance_rate=target_acceptance_rate,
            dense_mass_matrix=dense_mass_matrix,
        )

    def _posterior(self, guess: PyTree, log_prior: Callable | None) -> _Posterior:
        guess = check_guess(guess)[0]
        if log_prior is not None:
            if not callable(log_prior):
                raise TypeError(f"log_prior must be callable or None, got {type(log_prior).__name__}")
            out = jax.eval_shape(log_prior, guess)
            if getattr(out, "shape", None) != ():
                raise TypeError(
                    "log_prior must return a scalar (the log prior density at params); got "
                    + (f"shape {out.shape}" if hasattr(out, "shape") else type(out).__name__)
                )
        return _Posterior(self._checked(guess, None), log_prior)

    def run_lhs_param_scan(
        self, xmins: Any, xmaxs: Any, n_dim: int, num_evaluations: int,
        seed: int | None = None, randkey: Any = None,
    ) -> tuple:
        """Compute sumstat and loss values over a Latin Hypercube sample.

        Parameters
        ----------
        xmins, xmaxs : float | array-like
            Lower and upper bound on each parameter.
        n_dim : int
            Number of parameters.
        num_evaluations : int
            Number of Latin Hypercube samples to draw and evaluate.
        seed : int (default=None)
            Seed to make LHD draws reproducible, randomized by default (the
            same on every rank).
        randkey : PRNGKey | int (default=None)
            Random key passed to each sumstat and loss evaluation.

        Returns
        -------
        params, sumstats, losses
            The drawn parameters, and the sumstats and loss at each of them.
        """
        if seed is None:
            seed = _comm.bcast(int(np.random.SeedSequence().entropy % 2**32), comm=self.fit_comm)

        def sumstats_and_loss(params):
            return self.calc_sumstats_and_loss_from_params(params, randkey=randkey)

        return optim.lhs_param_scan(sumstats_and_loss, xmins, xmaxs, n_dim, num_evaluations, seed)
