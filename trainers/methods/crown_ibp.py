"""CROWN-IBP training (Zhang et al. 2020): beta * CROWN-IBP + (1 - beta) * IBP, beta moving
from ``beta_start`` to ``beta_end`` as eps_max(t) ramps up, in one of two forms:

- ``loss_fusion`` (default): :class:`FusedCrownIBPLoss` bounds the cross-entropy itself
  (``trainers.bounds.fusion.crown_ibp_ce_upper``, the loss fusion of auto_LiRPA, Xu et al. 2020):
  one backward row per sample instead of one per margin, so a step costs about 1.5-2x an IBP
  step instead of 7-12x (docs/benchmarks.md). beta mixes the two bounds of sum_j exp(z_j - z_y);
- ``loss_fusion=False``: :class:`CrownIBPMargins` mixes the margin bounds, then the robust CE
  (the original formulation; the same bound at beta = 0, not in general otherwise).

Both are fixed radius x IBP pass with recorded pre-activation bounds (CROWN-IBP's intermediate
bounds) x the standard kappa mixing."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from trainers.bounds import crown_ibp_margins
from trainers.bounds.fusion import crown_ibp_ce_upper
from trainers.methods.base import register_method
from trainers.methods.certified import CertifiedTraining, Schedule
from trainers.methods.losses import KappaMixing, LossBase, LossInput, LossOutput
from trainers.radius import FixedRadius
from trainers.schedules import linear
from trainers.settings import bad, setting


@dataclass(frozen=True)
class CrownIBPParams:
    beta_start: float = setting(1.0, "CROWN-IBP: weight of the CROWN-IBP bound when the ramp starts")
    beta_end: float = setting(0.0, "CROWN-IBP: weight of the CROWN-IBP bound when the ramp ends")
    loss_fusion: bool = setting(
        True, "CROWN-IBP: bound the cross-entropy itself (one backward row per sample, ~IBP's cost)"
    )

    def __post_init__(self) -> None:
        for name in ("beta_start", "beta_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, getattr(self, name), "must lie in [0, 1]")


def beta_at(params: CrownIBPParams, schedule: Schedule, step: int) -> float:
    return linear(params.beta_start, params.beta_end, schedule.ramp(step))


class CrownIBPMargins:
    """beta(t) * CROWN-IBP + (1 - beta(t)) * IBP margin bounds."""

    needs_preact = True  # the backward pass uses IBP's pre-activation bounds

    def __init__(self, params: CrownIBPParams, schedule: Schedule) -> None:
        self.params, self.schedule = params, schedule

    def beta(self, step: int) -> float:
        return beta_at(self.params, self.schedule, step)

    def __call__(self, model, x, y, eps, lb, ctx, step) -> Tensor:
        beta = self.beta(step)
        if beta <= 0.0:
            return lb
        return beta * crown_ibp_margins(model, x, y, eps, ctx) + (1 - beta) * lb


class FusedCrownIBPLoss(LossBase):
    """L_rob = the mean of per-sample upper bounds of the cross-entropy over the box: beta(t)
    CROWN-IBP + (1 - beta(t)) IBP, mixed on sum_j exp(z_j - z_y) (at beta = 0 exactly the
    robust CE of the IBP margins)."""

    needs_preact = True  # the backward pass uses IBP's pre-activation bounds

    def __init__(self, params: CrownIBPParams) -> None:
        self.params = params

    def __call__(self, inp: LossInput) -> LossOutput:
        beta = beta_at(self.params, inp.schedule, inp.step)
        ce = crown_ibp_ce_upper(inp.model, inp.x, inp.y, inp.eps, inp.ctx, beta=beta, ibp_lb=inp.lb)
        return LossOutput(ce.mean())


@register_method("crown-ibp", CrownIBPParams)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    schedule = Schedule(cfg, steps_per_epoch)
    if cfg.params.loss_fusion:
        loss = KappaMixing(FusedCrownIBPLoss(cfg.params))
        return CertifiedTraining(cfg, steps_per_epoch, radius=FixedRadius(), schedule=schedule, loss=loss)
    margins = CrownIBPMargins(cfg.params, schedule)
    return CertifiedTraining(cfg, steps_per_epoch, radius=FixedRadius(), schedule=schedule, margins=margins)
