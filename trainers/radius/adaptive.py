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

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from trainers.bounds import clean_pass
from trainers.bounds.engine import BoundContext, ibp_margins_fn, other_classes
from trainers.radius.base import RadiusBase
from trainers.rootfind import min_margin, solve_radius

if TYPE_CHECKING:
    from trainers.methods.acert import ACERTParams


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
    eps_i = min((1 + warm_overshoot) r_i, eps_max(t)) in one joint clean + IBP pass, as IBP does:
    no separate clean pass and no root solve. The loss's own pass then gives, for free, the clean
    margin g(0) and the bound g(eps_i) of every sample, and r_i moves to the secant root
    eps_i * g(0) / (g(0) - g(eps_i)): downwards (interpolation) where eps_i was not certified,
    upwards (extrapolation, capped at max_eps) where it was. A sample certified at the cap
    eps_max(t) itself is instead set to max_eps (``warm_at_cap``), so that its next visit trains
    at the next cap, as the exact solver does while the sample stays certified there: during the
    ramp the cap and the model's radii grow between two visits, and the secant's estimate from the
    smaller cap trailed them (23 % less validation ACR without it, docs/benchmarks.md §2b).
    Samples seen for the first time (the first epoch of the ramp) are solved exactly before the
    step, as the exact solver does. A sample misclassified at its last visit and correct now
    starts from its clean margin over the batch's median bound slope (``warm_new_radius=slope``;
    ``solve`` solves those exactly). A misclassified sample's estimate is 0; one that was correct
    at its last visit and is misclassified now trains at radius 0, on its clean margins, as the
    paper and the exact solver do (``warm_flipped=clean``, the default, at the price of a backward
    pass through the clean path); ``bound`` keeps its bound at the estimate instead.

    It was tuned and validated on Fashion-MNIST at max_eps 0.1 only: on MNIST at max_eps 0.4 it
    trained 12-24 points less accurately than the exact solver (docs/benchmarks.md §2b).
    These radii are training targets, not certificates: certification always solves exactly.
    """

    def __init__(self, params: ACERTParams, max_eps: float, bound_factory=ibp_margins_fn) -> None:
        self.params, self.max_eps, self.bound_factory = params, max_eps, bound_factory
        self.r_est: Tensor | None = None  # NaN: no estimate yet
        self._exact = AdaptiveRadius(params, bound_factory)

    def _estimates(self, idx: Tensor, like: Tensor) -> Tensor:
        need = int(idx.max()) + 1 if idx.numel() else 0
        if self.r_est is None or self.r_est.device != like.device or len(self.r_est) < need:
            grown = torch.full((max(need, 0),), float("nan"), dtype=like.dtype, device=like.device)
            if self.r_est is not None:
                grown[: len(self.r_est)] = self.r_est.to(grown)
            self.r_est = grown
        return self.r_est[idx]

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False, idx=None) -> Tensor:
        if idx is None:  # no sample identities: nothing to carry over, solve exactly
            return self._exact(model, x, y, eps_t, clean=clean, regularising=regularising)
        r = self._estimates(idx, x)
        first = torch.isnan(r)
        if bool(first.any()):  # first sight (the first ramp epoch): solve exactly, as ACERT does
            with torch.no_grad():
                logits, ctx = clean_pass(model, x, update_stats=False)
                solved = self._exact(model, x, y, eps_t, clean=(logits, ctx))
            r = torch.where(first, solved, r)
            self.r_est[idx] = r
        eps = (r * (1.0 + self.params.warm_overshoot)).clamp(0.0, eps_t)
        if self.params.min_eps > 0 and regularising:
            eps = eps.clamp(min=min(self.params.min_eps, eps_t))
        return eps

    @torch.no_grad()
    def _update(self, model, x, y, idx, eps, eps_t, logits, lb, ctx) -> Tensor:
        others = other_classes(y, logits.shape[1])
        g0 = (logits.gather(1, y[:, None]) - logits.gather(1, others)).min(1).values
        ge = min_margin(lb)
        correct = g0 > 0
        new = torch.zeros_like(g0)  # misclassified: radius 0
        known = correct & (eps > 0)
        drop = (g0 - ge).clamp(min=torch.finfo(g0.dtype).tiny)
        new = torch.where(known, eps * g0 / drop, new)
        if self.params.warm_at_cap:  # certified at the cap: assume it still is at the next cap
            new = torch.where(known & (ge > 0) & (eps >= eps_t), torch.full_like(new, self.max_eps), new)
        cold = (correct & ~known).nonzero().squeeze(1)
        if cold.numel() and self.params.warm_new_radius == "slope":
            slopes = (drop / eps)[known]  # margin lost per unit of radius, this batch
            if slopes.numel():
                new[cold] = g0[cold] / slopes.median()
                cold = cold[:0]
        if cold.numel():  # no estimate to start from: the exact solve, on these samples only
            sub = BoundContext(affines=dict(ctx.affines))
            bound = self.bound_factory(model, x[cold], y[cold], sub)
            p = self.params
            new[cold] = solve_radius(
                lambda i, e: min_margin(bound(i, e)),
                g0[cold],
                eps_t,
                rel_tol=p.root_rel_tol,
                abs_tol=eps_t * 1e-4,
                max_iter=p.root_iters,
            )
        self.r_est[idx] = new.clamp(0.0, self.max_eps)
        return correct

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
        return {} if self.r_est is None else {"r_est": self.r_est.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "r_est" in state:
            self.r_est = state["r_est"].clone()
