"""ACERT: adaptive certified training (Nurlanov, Schmidt, Bernard 2023).

Every sample is trained at its own radius eps_i: its current certified radius under the
model, i.e. the root of R(x_i, eps) = 0 with R the smallest IBP margin lower bound, capped
at eps_max(t) (the radius-growth schedule) and 0 for misclassified samples. The roots are
found per batch, without gradients, by the vectorised bracketing solver of
``trainers.rootfind`` (the paper uses Brent's method, ~10 iterations). The loss is
(1 - kappa) * L_rob(x, eps_i) + kappa * L_std(x), plus the Shi et al. regularisers during the
ramp, when eps_i may be floored at ``min_eps``.

BatchNorm (train mode): the clean-batch statistics are computed once per batch and used by
every bound evaluation of the root solver and by the loss pass (the Shi et al. convention).
One clean pass (with autograd) serves the loss, the statistics and the solver's clean
margins, so a step costs one clean pass, the solver's bound passes and one bound pass
with gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainers.bounds import clean_pass
from trainers.bounds.engine import BoundContext, ibp_margins_fn, other_classes
from trainers.methods.base import register_method
from trainers.methods.certified import CertifiedTraining
from trainers.rootfind import min_margin, solve_radius
from trainers.settings import bad, setting


@dataclass(frozen=True)
class ACERTParams:
    root_iters: int = setting(10, "ACERT: bound evaluations per batch for the adaptive radii")
    root_rel_tol: float = setting(1e-4, "ACERT: relative tolerance of the adaptive radii")
    min_eps: float = setting(0.0, "ACERT: floor of the adaptive radii while regularising")

    def __post_init__(self) -> None:
        if self.root_iters < 1:
            raise bad("root_iters", self.root_iters, "must be >= 1")
        if not 0 < self.root_rel_tol < 1:
            raise bad("root_rel_tol", self.root_rel_tol, "must lie in (0, 1)")
        if self.min_eps < 0:
            raise bad("min_eps", self.min_eps, "must be >= 0")


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


class AdaptiveRadius:
    """Each sample at its current certified radius, capped at eps_max(t)."""

    needs_clean = True

    def __init__(self, params: ACERTParams, bound_factory=ibp_margins_fn) -> None:
        self.params, self.bound_factory = params, bound_factory

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False) -> Tensor:
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


@register_method("acert", ACERTParams)
def build(cfg, steps_per_epoch: int, *, bound_factory=ibp_margins_fn) -> CertifiedTraining:
    return CertifiedTraining(cfg, steps_per_epoch, radius=AdaptiveRadius(cfg.params, bound_factory))
