"""Bound methods by name: each maps (model, x, y, eps[B]) to lower bounds of the margins
z_y - z_j (j != y), a tensor [B, K-1] with the classes j in increasing order.

The engine is this package's own; auto_LiRPA serves as an independent cross-check in the tests
(``tests/lirpa``), not as a product dependency.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from trainers.bounds.alpha_crown import alpha_crown_margins
from trainers.bounds.crown import crown_ibp_margins
from trainers.bounds.crown_full import crown_margins
from trainers.bounds.engine import BoundContext, clean_pass, ibp_margins, joint_ibp, other_classes
from trainers.registry import Registry

# A bound method: margin_lower(model, x, y, eps[B], ctx=None) -> Tensor[B, K-1], sound lower
# bounds of z_y - z_j (j != y). Every registered one passes the soundness suite (tests/test_bounds.py).
BOUND_METHODS: Registry = Registry("bound method")
BOUND_METHODS.register("ibp", ibp_margins)
BOUND_METHODS.register("crown-ibp", crown_ibp_margins)
BOUND_METHODS.register("crown", crown_margins)
BOUND_METHODS.register("alpha-crown", alpha_crown_margins)
# The methods ``best`` combines: the cheapest first (a certifier can stop early on a sample)
BEST_OF = ("ibp", "crown-ibp", "crown")


def best_margins(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext | None = None
) -> Tensor:
    """The element-wise best of IBP, CROWN-IBP and CROWN: each is sound, so is their maximum."""
    out = ibp_margins(model, x, y, eps, ctx)
    for name in BEST_OF[1:]:
        out = torch.maximum(out, BOUND_METHODS.get(name)(model, x, y, eps, ctx))
    return out


BOUND_METHODS.register("best", best_margins)
get_bound_method = BOUND_METHODS.get


def margin_lower(model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, method: str = "ibp") -> Tensor:
    """Lower bounds [B, K-1] of z_y - z_j over the l_inf box of radius eps[b] (clipped to [0, 1])."""
    return get_bound_method(method)(model, x, y, eps)


__all__ = [
    "BEST_OF",
    "BOUND_METHODS",
    "BoundContext",
    "clean_pass",
    "crown_ibp_margins",
    "crown_margins",
    "ibp_margins",
    "joint_ibp",
    "margin_lower",
    "other_classes",
]
