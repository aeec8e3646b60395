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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.bounds import clean_pass, ibp_margins
from trainers.bounds.engine import other_classes
from trainers.methods.base import StepOutput
from trainers.methods.ibp import IBP
from trainers.rootfind import min_margin, solve_radius
from trainers.schedules import reg_weight_at


@torch.no_grad()
def adaptive_radii(
    model: nn.Sequential, x: Tensor, y: Tensor, cap: float, *, iters: int, rel_tol: float
) -> Tensor:
    """Per-sample certified radii under the current model, capped at ``cap`` (no gradient)."""
    logits, ctx = clean_pass(model, x, update_stats=False)
    others = other_classes(y, logits.shape[1])
    clean_margin = (logits.gather(1, y[:, None]) - logits.gather(1, others)).min(1).values

    def f(idx: Tensor, eps: Tensor) -> Tensor:
        return min_margin(ibp_margins(model, x[idx], y[idx], eps, ctx))

    return solve_radius(f, clean_margin, cap, rel_tol=rel_tol, abs_tol=cap * 1e-4, max_iter=iters)


class ACERT(IBP):
    name = "acert"

    def step(self, model: nn.Sequential, x: Tensor, y: Tensor, step: int) -> StepOutput:
        eps_t = self.eps_max(step)
        if eps_t <= 0.0:
            logits = model(x)
            return StepOutput(F.cross_entropy(logits, y), logits, 0.0, 0.0)
        eps = adaptive_radii(model, x, y, eps_t, iters=self.cfg.root_iters, rel_tol=self.cfg.root_rel_tol)
        if self.cfg.min_eps > 0 and reg_weight_at(eps_t, self.max_eps, self.cfg.reg_weight) > 0:
            eps = eps.clamp(min=min(self.cfg.min_eps, eps_t))
        loss, logits = self.bounded_loss(model, x, y, eps, step, eps_t)
        return StepOutput(loss, logits, eps.mean().item(), eps_t)
