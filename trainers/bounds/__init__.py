"""Bound methods by name: each maps (model, x, y, eps[B]) to lower bounds of the margins
z_y - z_j (j != y), a tensor [B, K-1] with the classes j in increasing order.

``native`` is the engine of this package (the default); ``auto_lirpa`` is a cross-check
backend (``trainers.bounds.autolirpa``) used when a compatible auto_LiRPA is importable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from trainers.bounds.crown import crown_ibp_margins
from trainers.bounds.engine import BoundContext, clean_pass, ibp_margins, joint_ibp, other_classes


def best_margins(model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext | None = None) -> Tensor:
    """The element-wise best of IBP and CROWN-IBP: both are sound, so is their maximum."""
    return torch.maximum(ibp_margins(model, x, y, eps, ctx), crown_ibp_margins(model, x, y, eps, ctx))


BOUND_METHODS: dict[str, Callable[..., Tensor]] = {
    "ibp": ibp_margins,
    "crown-ibp": crown_ibp_margins,
    "best": best_margins,
}
BACKENDS = ("native", "auto_lirpa")


def get_bound_method(name: str) -> Callable[..., Tensor]:
    if name not in BOUND_METHODS:
        raise ValueError(f"unknown bound method {name!r}; known: {', '.join(BOUND_METHODS)}")
    return BOUND_METHODS[name]


def margin_lower(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, method: str = "ibp", *, backend: str = "native"
) -> Tensor:
    """Lower bounds [B, K-1] of z_y - z_j over the l_inf box of radius eps[b] (clipped to [0, 1])."""
    if backend == "native":
        return get_bound_method(method)(model, x, y, eps)
    if backend == "auto_lirpa":
        from trainers.bounds.autolirpa import auto_lirpa_margins

        return auto_lirpa_margins(model, x, y, eps, method)
    raise ValueError(f"unknown bound backend {backend!r}; known: {', '.join(BACKENDS)}")


__all__ = [
    "BOUND_METHODS",
    "BoundContext",
    "clean_pass",
    "crown_ibp_margins",
    "ibp_margins",
    "joint_ibp",
    "margin_lower",
    "other_classes",
]
