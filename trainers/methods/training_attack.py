"""The training attack that MTL-IBP and SABR share: PGD in the box of each sample, with the
clean batch's BatchNorm statistics, and the validation of its settings.

A method's params dataclass that trains with it declares ``attack_steps``, ``attack_restarts``
and ``attack_step_ratio`` (the same names, so the same flags); ``check_attack_settings`` is its
``__post_init__``'s check of them. ``attack_point`` attacks the function the step's bound pass
bounds: the model with every per-channel affine layer fixed to the clean batch's map in
``ctx`` (``with_batch_stats``), as constants, so the attack neither depends on the other
samples' perturbations nor moves the running statistics.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from trainers.attacks import Logits, pgd_attack
from trainers.bounds.engine import BoundContext, layers_of, propagate
from trainers.settings import bad


def check_attack_settings(params: Any) -> None:
    """One-line errors naming a bad attack setting of ``params``."""
    for name in ("attack_steps", "attack_restarts"):
        if getattr(params, name) < 1:
            raise bad(name, getattr(params, name), "must be >= 1")
    if params.attack_step_ratio is not None and not params.attack_step_ratio > 0:
        raise bad("attack_step_ratio", params.attack_step_ratio, "must be > 0 (or unset)")


def with_batch_stats(model: nn.Sequential, ctx: BoundContext, *, detach: bool) -> Logits:
    """The model's logits with every per-channel affine layer fixed to its map in ``ctx`` (the
    clean batch's BatchNorm statistics); ``detach``: as constants (for the attack)."""
    layers = layers_of(model)
    if model.training:
        bns = [i for i, m in enumerate(layers) if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        assert all(i in ctx.affines for i in bns), "the context lacks the clean batch's statistics"
    affines = {i: (s.detach(), t.detach()) if detach else (s, t) for i, (s, t) in ctx.affines.items()}
    frozen = BoundContext(affines=affines)

    def forward(z: Tensor) -> Tensor:
        feats, _, _ = propagate(layers, frozen, clean=z)
        return layers[-1](feats)

    return forward


def attack_point(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext, params: Any
) -> Tensor:
    """The PGD point of the box of radius ``eps`` (per sample) with ``params``' attack settings;
    the attack sees the clean batch's BatchNorm maps as constants."""
    return pgd_attack(
        model,
        x,
        y,
        eps,
        steps=params.attack_steps,
        restarts=params.attack_restarts,
        step_size=params.attack_step_ratio,
        forward=with_batch_stats(model, ctx, detach=True),
    )
