"""The IBP-initialisation regularisers of Shi et al. 2021 ("Fast certified robust training
with short warmup"): bound tightness and ReLU balance, computed from the pre-activation
bounds of every ReLU recorded during the bound pass. Mirrors ``compute_reg`` of their code
(tol = 0.5); the caller scales the sum by ``lambda * (1 - eps_max(t) / max_eps)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainers.bounds.engine import BoundContext


def shi_regularizer(ctx: BoundContext, input_radius: Tensor, tol: float = 0.5) -> Tensor:
    """L_tightness + L_relu averaged over ReLU layers (0 if no layer has bounds recorded).

    ``input_radius`` is the radius of the box after the normalisation layer (the first
    layer the bounds see), as in their code where the data are normalised beforehand.
    """
    tight0 = input_radius.mean()
    loss_tight = input_radius.new_zeros(())
    loss_relu = input_radius.new_zeros(())
    n = 0
    for lower, upper in ctx.preact.values():
        n += 1
        center, diff = (upper + lower) / 2, (upper - lower) / 2
        loss_tight = loss_tight + F.relu(tol - tight0 / diff.mean().clamp(min=1e-12)) / tol
        active, inactive = (lower > 0).to(center.dtype), (upper < 0).to(center.dtype)
        mean_act, mean_inact = (center * active).mean(), (center * inactive).mean()
        delta = (center - center.mean()) ** 2
        var_act, var_inact = (delta * active).sum(), (delta * inactive).sum()
        mean_ratio = mean_act / -mean_inact
        var_ratio = var_act / var_inact
        mean_ratio = torch.minimum(mean_ratio, 1 / mean_ratio.clamp(min=1e-12))
        var_ratio = torch.minimum(var_ratio, 1 / var_ratio.clamp(min=1e-12))
        term = (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
        if torch.isfinite(term):  # a layer with no (in)active unit has no ratio: skip it
            loss_relu = loss_relu + term
    if n == 0:
        return loss_tight
    return (loss_tight + loss_relu) / n
