"""ACERT's radius policies (Nurlanov, Schmidt, Bernard 2023): each sample is trained at its
current certified radius, the root of R(x_i, eps) = 0 with R the smallest IBP margin lower bound,
capped at eps_max(t) and 0 for misclassified samples.

- :class:`AdaptiveRadius` (``radius_solver=exact``) root-solves every sample's radius every
  batch, without gradients, with the bracketing solver of ``trainers.rootfind`` (the paper's
  Brent iterations, vectorised);
- :class:`WarmRadius` (``radius_solver=warm``) carries each sample's radius across epochs and
  updates it from the bound pass the loss makes (its ``after_bounds``).

Their settings are ACERT's (``trainers.methods.acert.ACERTParams``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from trainers.bounds import clean_pass
from trainers.bounds.engine import BoundContext, ibp_margins_fn, other_classes
from trainers.radius.base import RadiusBase
from trainers.rootfind import min_margin, solve_radius

if TYPE_CHECKING:
    from trainers.methods.acert import ACERTParams

DRIFT_MAX = 2.0  # the estimates' scale stays within [1/2, 2] (warm_drift)
DRIFT_MIN_SAMPLES = 8  # fewer tracked samples in a batch: no drift update from it


@torch.no_grad()
def adaptive_radii(
    model: nn.Sequential,
    x: Tensor,
    y: Tensor,
    cap: float,
    *,
    iters: int,
    rel_tol: float,
    clean: tuple[Tensor, BoundContext] | None = None,
    bound_factory=ibp_margins_fn,
) -> Tensor:
    """Per-sample certified radii under the current model, capped at ``cap`` (no gradient).

    ``clean`` = (logits, ctx) of a ``clean_pass`` on this very batch, if the caller has one;
    ``bound_factory(model, x, y, ctx) -> f(idx, eps)`` makes the solver's bound function.
    """
    logits, ctx = clean if clean is not None else clean_pass(model, x, update_stats=False)
    others = other_classes(y, logits.shape[1])
    clean_margin = (logits.gather(1, y[:, None]) - logits.gather(1, others)).min(1).values

    bound = bound_factory(model, x, y, ctx)

    def f(idx: Tensor, eps: Tensor) -> Tensor:
        return min_margin(bound(idx, eps))

    return solve_radius(f, clean_margin, cap, rel_tol=rel_tol, abs_tol=cap * 1e-4, max_iter=iters)


class AdaptiveRadius(RadiusBase):
    """Each sample at its current certified radius, capped at eps_max(t)."""

    needs_clean = True

    def __init__(self, params: ACERTParams, bound_factory=ibp_margins_fn) -> None:
        self.params, self.bound_factory = params, bound_factory

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False, idx=None) -> Tensor:
        p = self.params
        eps = adaptive_radii(
            model,
            x,
            y,
            eps_t,
            iters=p.root_iters,
            rel_tol=p.root_rel_tol,
            clean=clean,
            bound_factory=self.bound_factory,
        )
        if p.min_eps > 0 and regularising:
            eps = eps.clamp(min=min(p.min_eps, eps_t))
        return eps


class WarmRadius(RadiusBase):
    """ACERT's radii amortised across epochs (``--radius-solver warm``; ``exact`` is the default).

    Each sample keeps an estimate r_i of its certified radius from the last time it was seen
    (a tensor over the training split, in the checkpoint). The batch trains at
    eps_i = min((1 + warm_overshoot) r_i, eps_max(t)) in one joint clean + IBP pass, as IBP does.
    The loss's own pass then gives, for free, the clean margin g(0) and the bound g(eps_i) of
    every sample, and r_i moves to the secant root eps_i * g(0) / (g(0) - g(eps_i)): downwards
    (interpolation) where eps_i was not certified, upwards (extrapolation, capped at max_eps)
    where it was.

    A sample certified at the cap eps_max(t) itself has no root in sight: its estimate is only
    a lower bound (``censored``, r_i = that cap). If the cap has grown by its next visit, that
    visit solves its radius exactly under the current model before the step (``warm_at_cap``,
    on those samples only), as samples seen for the first time are. During the ramp the cap and
    the model's radii grow between two visits: the secant's estimate from the smaller cap trails
    them (Fashion-MNIST, max_eps 0.1, second ramp epoch: mean training radius 0.009 against the
    exact solver's 0.022), while training such a sample at the new cap whatever its radius (issue
    #11's rule) trains far above it at large max_eps, where few samples stay certified at the next
    cap (max_eps 0.4: 49 % of the samples at the cap, 12 % certified there, mean training radius
    0.079 against 0.058; docs/benchmarks.md §2b). After the ramp the cap no longer grows and
    nothing is solved.

    An estimate is one visit (an epoch) old, and during the ramp the model's radii grow in that
    time: every other sample trains at its estimate times a scale (``warm_drift``) that the
    batches move towards their median ratio of the secant root to the radius trained at, the
    growth the loss's pass measures for free (1 while the estimates track the model).

    A sample misclassified at its last visit and correct now starts from its clean margin over
    the batch's median bound slope (``warm_new_radius=slope``; ``solve`` solves those exactly).
    A misclassified sample's estimate is 0; one that was correct at its last visit and is
    misclassified now trains at radius 0, on its clean margins, as the paper and the exact solver
    do (``warm_flipped=clean``, the default, at the price of a backward pass through the clean
    path); ``bound`` keeps its bound at the estimate instead.

    These radii are training targets, not certificates: certification always solves exactly.
    """

    def __init__(self, params: ACERTParams, max_eps: float, bound_factory=ibp_margins_fn) -> None:
        self.params, self.max_eps, self.bound_factory = params, max_eps, bound_factory
        self.r_est: Tensor | None = None  # NaN: no estimate yet
        self.censored: Tensor | None = None  # r_est is the cap the sample was certified at
        self._exact = AdaptiveRadius(params, bound_factory)
        self.log_drift = 0.0  # log of the factor the estimates are scaled by (warm_drift)
        self._solved: Tensor | None = None  # the samples of this batch solved exactly

    def _estimates(self, idx: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        need = int(idx.max()) + 1 if idx.numel() else 0
        stale = self.r_est is None or self.r_est.device != like.device or len(self.r_est) < need
        if stale or self.censored is None or self.censored.shape != self.r_est.shape:
            grown = torch.full((max(need, 0),), float("nan"), dtype=like.dtype, device=like.device)
            flags = torch.zeros(len(grown), dtype=torch.bool, device=like.device)
            if self.r_est is not None:
                grown[: len(self.r_est)] = self.r_est.to(grown)
            if self.censored is not None:
                flags[: len(self.censored)] = self.censored.to(flags.device)
            self.r_est, self.censored = grown, flags
        return self.r_est[idx], self.censored[idx]

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False, idx=None) -> Tensor:
        if idx is None:  # no sample identities: nothing to carry over, solve exactly
            return self._exact(model, x, y, eps_t, clean=clean, regularising=regularising)
        r, censored = self._estimates(idx, x)
        # first sight (the first ramp epoch), or certified at a cap that has grown since
        todo = (torch.isnan(r) | (censored & (r < eps_t * (1 - 1e-6)))).nonzero().squeeze(1)
        solved = torch.zeros_like(censored)
        solved[todo] = True
        self._solved = solved
        scale = torch.where(solved, 1.0, math.exp(self.log_drift))  # an estimate trails, a solve not
        if todo.numel():
            r = r.clone()
            r[todo] = self._solve(model, x, y, todo, eps_t)
            self.r_est[idx[todo]], self.censored[idx[todo]] = r[todo], False
        eps = (r * scale * (1.0 + self.params.warm_overshoot)).clamp(0.0, eps_t)
        if self.params.min_eps > 0 and regularising:
            eps = eps.clamp(min=min(self.params.min_eps, eps_t))
        return eps

    @torch.no_grad()
    def _solve(
        self, model, x, y, todo: Tensor, eps_t: float, clean: tuple[Tensor, BoundContext] | None = None
    ):
        """Exact radii of the samples ``todo`` of the batch, capped at ``eps_t`` (BatchNorm: the
        whole batch's statistics, as the exact solver and the loss's pass use)."""
        logits, ctx = clean if clean is not None else clean_pass(model, x, update_stats=False)
        others = other_classes(y[todo], logits.shape[1])
        g0 = (logits[todo].gather(1, y[todo, None]) - logits[todo].gather(1, others)).min(1).values
        bound = self.bound_factory(model, x[todo], y[todo], BoundContext(affines=dict(ctx.affines)))
        p = self.params
        return solve_radius(
            lambda i, e: min_margin(bound(i, e)),
            g0,
            eps_t,
            rel_tol=p.root_rel_tol,
            abs_tol=eps_t * 1e-4,
            max_iter=p.root_iters,
        )

    @torch.no_grad()
    def _update(self, model, x, y, idx, eps, eps_t, logits, lb, ctx) -> Tensor:
        self._estimates(idx, x)  # the state exists (and is long enough) before it is written
        others = other_classes(y, logits.shape[1])
        g0 = (logits.gather(1, y[:, None]) - logits.gather(1, others)).min(1).values
        ge = min_margin(lb)
        correct = g0 > 0
        new = torch.zeros_like(g0)  # misclassified: radius 0
        known = correct & (eps > 0)
        drop = (g0 - ge).clamp(min=torch.finfo(g0.dtype).tiny)
        new = torch.where(known, eps * g0 / drop, new)
        self._track_drift(new, eps, known, eps_t)
        censored = known & (ge > 0) & (eps >= eps_t) if self.params.warm_at_cap else torch.zeros_like(correct)
        new = torch.where(censored, eps, new)  # certified at the cap: a lower bound, kept as such
        cold = (correct & ~known).nonzero().squeeze(1)
        if cold.numel() and self.params.warm_new_radius == "slope":
            slopes = (drop / eps)[known]  # margin lost per unit of radius, this batch
            if slopes.numel():
                new[cold] = g0[cold] / slopes.median()
                cold = cold[:0]
        if cold.numel():  # no estimate to start from: the exact solve, on these samples only
            new[cold] = self._solve(model, x, y, cold, eps_t, clean=(logits, ctx))
        self.r_est[idx] = new.clamp(0.0, self.max_eps)
        self.censored[idx] = censored
        return correct

    def _track_drift(self, new: Tensor, eps: Tensor, known: Tensor, eps_t: float) -> None:
        """``warm_drift``: move the estimates' scale towards the batch's median ratio of the
        secant root (the radius under the current model) to the radius the sample was trained
        at, over the samples trained at a scaled estimate below the cap. Tracking, that ratio is
        1; while the model's radii grow between visits (the ramp), it is above 1."""
        gain = self.params.warm_drift
        solved = self._solved
        if gain <= 0 or solved is None or solved.shape != eps.shape:
            return
        tracked = known & ~solved & (eps < eps_t)
        if int(tracked.sum()) >= DRIFT_MIN_SAMPLES:
            ratio = float((new[tracked] / eps[tracked]).median().clamp(1 / DRIFT_MAX, DRIFT_MAX))
            limit = math.log(DRIFT_MAX)
            self.log_drift = min(max(self.log_drift + gain * math.log(ratio), -limit), limit)

    def after_bounds(self, model, x, y, idx, eps, eps_t, logits, lb, ctx) -> Tensor:
        if idx is None:
            return lb
        correct = self._update(model, x, y, idx, eps.detach(), eps_t, logits.detach(), lb.detach(), ctx)
        if self.params.warm_flipped == "bound" or bool(correct.all()):
            return lb
        others = other_classes(y, logits.shape[1])
        clean_margins = logits.gather(1, y[:, None]) - logits.gather(1, others)  # the bound at eps = 0
        return torch.where(correct[:, None] | (eps[:, None] == 0), lb, clean_margins)

    def state_dict(self) -> dict:
        if self.r_est is None:
            return {}
        censored = (
            self.censored if self.censored is not None else torch.zeros(len(self.r_est), dtype=torch.bool)
        )
        return {
            "r_est": self.r_est.detach().cpu(),
            "censored": censored.detach().cpu(),
            "log_drift": torch.tensor(self.log_drift),
        }

    def load_state_dict(self, state: dict) -> None:
        if "r_est" in state:
            self.r_est = state["r_est"].clone()
            self.censored = state["censored"].clone() if "censored" in state else None
            self.log_drift = float(state.get("log_drift", 0.0))
