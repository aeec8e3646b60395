"""CROWN-IBP training (Zhang et al. 2020): the margin bound is beta * CROWN-IBP + (1 - beta)
* IBP, beta moving from ``beta_start`` to ``beta_end`` as eps_max(t) ramps up.

Composed as fixed radius x (IBP refined by :class:`CrownIBPMargins`, a ``MarginBound``) x the
standard loss mixing. A CROWN-IBP that bounds the loss itself would instead be a ``Loss`` (see
``trainers.methods.losses``) that asks for no IBP pass and bounds from (model, x, y, eps, ctx)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from trainers.bounds import crown_ibp_margins
from trainers.methods.base import register_method
from trainers.methods.certified import CertifiedTraining, Schedule
from trainers.radius import FixedRadius
from trainers.schedules import linear
from trainers.settings import bad, setting


@dataclass(frozen=True)
class CrownIBPParams:
    beta_start: float = setting(1.0, "CROWN-IBP: weight of the CROWN-IBP bound when the ramp starts")
    beta_end: float = setting(0.0, "CROWN-IBP: weight of the CROWN-IBP bound when the ramp ends")

    def __post_init__(self) -> None:
        for name in ("beta_start", "beta_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, getattr(self, name), "must lie in [0, 1]")


class CrownIBPMargins:
    """beta(t) * CROWN-IBP + (1 - beta(t)) * IBP margin bounds."""

    needs_preact = True  # the backward pass uses IBP's pre-activation bounds

    def __init__(self, params: CrownIBPParams, schedule: Schedule) -> None:
        self.params, self.schedule = params, schedule

    def beta(self, step: int) -> float:
        return linear(self.params.beta_start, self.params.beta_end, self.schedule.ramp(step))

    def __call__(self, model, x, y, eps, lb, ctx, step) -> Tensor:
        beta = self.beta(step)
        if beta <= 0.0:
            return lb
        return beta * crown_ibp_margins(model, x, y, eps, ctx) + (1 - beta) * lb


@register_method("crown-ibp", CrownIBPParams)
def build(cfg, steps_per_epoch: int) -> CertifiedTraining:
    schedule = Schedule(cfg, steps_per_epoch)
    return CertifiedTraining(
        cfg,
        steps_per_epoch,
        radius=FixedRadius(),
        schedule=schedule,
        margins=CrownIBPMargins(cfg.params, schedule),
    )
