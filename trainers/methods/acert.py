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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.bounds import clean_pass
from trainers.bounds.engine import BoundContext, ibp_margins_fn, other_classes
from trainers.methods.base import StepOutput
from trainers.methods.ibp import IBP
from trainers.rootfind import min_margin, solve_radius
from trainers.schedules import reg_weight_at


@torch.no_grad()
def adaptive_radii(
    model: nn.Sequential, x: Tensor, y: Tensor, cap: float, *, iters: int, rel_tol: float,
    clean: tuple[Tensor, BoundContext] | None = None,
) -> Tensor:
    """Per-sample certified radii under the current model, capped at ``cap`` (no gradient).

    ``clean`` = (logits, ctx) of a ``clean_pass`` on this very batch, if the caller has one.
    """
    logits, ctx = clean if clean is not None else clean_pass(model, x, update_stats=False)
    others = other_classes(y, logits.shape[1])
    clean_margin = (logits.gather(1, y[:, None]) - logits.gather(1, others)).min(1).values

    bound = ibp_margins_fn(model, x, y, ctx)

    def f(idx: Tensor, eps: Tensor) -> Tensor:
        return min_margin(bound(idx, eps))

    return solve_radius(f, clean_margin, cap, rel_tol=rel_tol, abs_tol=cap * 1e-4, max_iter=iters)


class ACERT(IBP):
    name = "acert"

    def step(self, model: nn.Sequential, x: Tensor, y: Tensor, step: int) -> StepOutput:
        eps_t = self.eps_max(step)
        if eps_t <= 0.0:
            logits = model(x)
            return StepOutput(F.cross_entropy(logits, y), logits, 0.0, 0.0)
        # the clean pass of the loss (autograd, running statistics updated) comes first, so
        # that the solver reuses its logits and BatchNorm statistics instead of its own pass
        logits, ctx = clean_pass(model, x, update_stats=True)
        eps = adaptive_radii(model, x, y, eps_t, iters=self.cfg.root_iters, rel_tol=self.cfg.root_rel_tol,
                             clean=(logits.detach(), ctx))
        if self.cfg.min_eps > 0 and reg_weight_at(eps_t, self.max_eps, self.cfg.reg_weight) > 0:
            eps = eps.clamp(min=min(self.cfg.min_eps, eps_t))
        loss, logits = self.bounded_loss(model, x, y, eps, step, eps_t, clean=(logits, ctx))
        return StepOutput(loss, logits, eps.mean().item(), eps_t)
