"""The IBP-initialisation regularisers of Shi et al. 2021 ("Fast certified robust training
with short warmup"): bound tightness and ReLU balance, computed from the pre-activation
bounds of every ReLU recorded during the bound pass. Mirrors ``compute_reg`` of their code
(tol = 0.5); the caller scales the sum by ``lambda * (1 - eps_max(t) / max_eps)``.

The activation-sized work (the means and variances of the active and inactive centres) is
done by the bound pass itself when it records (``RecordingIntervalReLU`` in
``trainers.bounds.engine``, five statistics per ReLU layer, with a hand-written backward);
what is left here is scalar arithmetic, on all layers at once.
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
    ``ctx`` must come from a bound pass with ``record_preact=True``.
    """
    missing = [i for i in ctx.preact if i not in ctx.relu_stats]
    if missing:
        raise ValueError(
            f"ReLU layers {missing} have pre-activation bounds but no statistics: record them with "
            "the bound pass (record_preact=True), not by hand"
        )
    if not ctx.relu_stats:
        return input_radius.new_zeros(())
    # per layer: mean radius, mean of the active centres, minus that of the inactive ones
    # (both over all units), and the variances of both (RecordingIntervalReLU)
    stats = torch.stack(list(ctx.relu_stats.values()))
    loss_tight = F.relu(tol - input_radius.mean() / stats[:, 0].clamp(min=1e-12)) / tol
    num, den = stats[:, 1::2], stats[:, 2::2]  # the mean ratio and the variance ratio
    # a layer with no inactive unit (or neither kind) has no ratio: their code skips its
    # non-finite term. It is found first, then evaluated on stand-in values of ratio 1, so
    # that no inf or NaN reaches the gradient of the other layers.
    with torch.no_grad():
        finite = torch.isfinite(_relu_balance(num, den, tol))
    keep = finite[:, None]
    loss_relu = torch.where(
        finite, _relu_balance(torch.where(keep, num, 1.0), torch.where(keep, den, 1.0), tol), 0.0
    )
    return (loss_tight.sum() + loss_relu.sum()) / stats.shape[0]


def _relu_balance(num: Tensor, den: Tensor, tol: float) -> Tensor:
    """L_relu per layer from [L, 2] numerators and denominators of the mean and variance
    ratios of the active and inactive centres: ratios far from 1 (either way) are penalised."""
    ratio = num / den
    ratio = torch.minimum(ratio, 1 / ratio.clamp(min=1e-12))
    return F.relu(tol - ratio).sum(1) / tol
