"""CROWN-IBP training (Zhang et al. 2020): the margin bound is beta * CROWN-IBP + (1 - beta)
* IBP, beta moving from ``beta_start`` to ``beta_end`` as eps_max(t) ramps up."""

from __future__ import annotations

from torch import Tensor

from trainers.bounds import crown_ibp_margins
from trainers.methods.ibp import IBP
from trainers.schedules import linear


class CrownIBP(IBP):
    name = "crown-ibp"
    needs_preact = True

    def beta(self, step: int) -> float:
        return linear(self.cfg.beta_start, self.cfg.beta_end, self.ramp(step))

    def refine(self, model, x, y, eps, lb, ctx, step) -> Tensor:
        beta = self.beta(step)
        if beta <= 0.0:
            return lb
        return beta * crown_ibp_margins(model, x, y, eps, ctx) + (1 - beta) * lb
