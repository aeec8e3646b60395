"""IBP training (Gowal et al. 2018) with the fast initialisation and regularisers of Shi et
al. 2021: one fixed radius eps_max(t) for every sample, ramped up after standard epochs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.bounds import ibp_margins, joint_ibp
from trainers.bounds.engine import BoundContext, input_box
from trainers.methods.base import Method, StepOutput, mixed_loss
from trainers.methods.regularizers import shi_regularizer
from trainers.schedules import reg_weight_at


class IBP(Method):
    name = "ibp"

    def step(self, model: nn.Sequential, x: Tensor, y: Tensor, step: int) -> StepOutput:
        eps_t = self.eps_max(step)
        if eps_t <= 0.0:
            logits = model(x)
            return StepOutput(F.cross_entropy(logits, y), logits, 0.0, 0.0)
        eps = torch.full((x.shape[0],), eps_t, dtype=x.dtype, device=x.device)
        loss, logits = self.bounded_loss(model, x, y, eps, step, eps_t)
        return StepOutput(loss, logits, eps_t, eps_t)

    def bounded_loss(self, model, x: Tensor, y: Tensor, eps: Tensor, step: int, eps_t: float,
                     clean: tuple[Tensor, BoundContext] | None = None):
        """Mixed robust/standard loss at per-sample radii ``eps``, plus the regulariser during the ramp.

        ``clean`` = (logits, ctx) of a ``clean_pass(update_stats=True)`` of this batch with
        autograd, when the caller already made one (ACERT); otherwise one joint pass does both.
        """
        reg_w = reg_weight_at(eps_t, self.max_eps, self.cfg.reg_weight)
        record = reg_w > 0 or self.needs_preact
        if clean is None:
            logits, lb, ctx = joint_ibp(model, x, y, eps, record_preact=record)
        else:
            logits, ctx = clean
            ctx.preact.clear()
            lb = ibp_margins(model, x, y, eps, ctx, record_preact=record)
        lb = self.refine(model, x, y, eps, lb, ctx, step)
        loss = mixed_loss(lb, logits, y, self.kappa(step))
        if reg_w > 0:
            loss = loss + reg_w * shi_regularizer(ctx, normalised_radius(model, x, eps), self.cfg.reg_tol)
        return loss, logits

    needs_preact = False

    def refine(self, model, x, y, eps, lb, ctx, step) -> Tensor:
        """Hook for methods that tighten the IBP margins (CROWN-IBP); IBP keeps them."""
        return lb


def normalised_radius(model: nn.Sequential, x: Tensor, eps: Tensor) -> Tensor:
    """Radius of the clipped input box after the model's normalisation layer."""
    lo, hi = input_box(x, eps)
    return (hi - lo) / 2 / model[0].std
