"""What a training method is, and the registry of methods.

A method is composed, not inherited: a method = radius policy x bound x loss.

- the radius policy (``trainers.radius``): which radius each sample is trained at (the fixed
  schedule eps_max(t), or ACERT's adaptive certified radii);
- the bound: the IBP pass the step makes at those radii, optionally refined by a margin bound
  (``trainers.methods.losses.MarginBound``: CROWN-IBP's beta mixing);
- the loss (``trainers.methods.losses.Loss``): it gets the batch, the radii, the clean logits,
  the IBP margins and the BoundContext, and returns the loss. Standard mixing
  ((1 - kappa) L_rob + kappa L_std around the robust cross-entropy of the margins), MTL-IBP's
  attack/bound mixture and SABR's small box are losses; a loss may also bound what it needs
  itself (SABR's box, a loss-fusion CROWN-IBP) and ask the step for no IBP pass.

``trainers.methods.certified.CertifiedTraining`` runs the ONE training step of every certified
method from these parts. A method file declares its own settings (a frozen params dataclass) and
registers a builder; a new method is that one file and its one register line:

    @dataclass(frozen=True)
    class MyParams:
        alpha: float = setting(0.5, "...")

    @register_method("my-method", MyParams)
    def build(cfg: TrainConfig, steps_per_epoch: int) -> TrainingMethod:
        return CertifiedTraining(cfg, steps_per_epoch, radius=FixedRadius(), loss=MyLoss(cfg.params))

The training loop (``trainers.train``) calls ``method.step(model, x, y, step, idx)`` and, for
checkpoints, ``state_dict`` / ``load_state_dict`` (no-ops in :class:`MethodBase`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.registry import Registry

if TYPE_CHECKING:
    from trainers.config import TrainConfig


@dataclass
class StepOutput:
    loss: Tensor
    logits: Tensor  # clean logits (for training accuracy)
    mean_radius: float | Tensor  # mean training radius of the batch (a tensor: no device sync)
    eps_max: float  # eps_max(t) at this step


class TrainingMethod(Protocol):
    """``step`` computes the loss of one batch; ``idx`` are the samples' positions in the
    training split (for methods with per-sample state); ``state_dict`` / ``load_state_dict``
    carry that state through the checkpoint ({} for most methods)."""

    steps_per_epoch: int

    def step(
        self, model: nn.Sequential, x: Tensor, y: Tensor, step: int, idx: Tensor | None = None
    ) -> StepOutput: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class MethodBase:
    """A method without state across batches: the checkpoint hooks of :class:`TrainingMethod`
    as no-ops."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


@dataclass(frozen=True)
class NoParams:
    """The params of a method without settings of its own."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type  # frozen dataclass of the method's own settings (fields made with `setting`)
    build: Callable[..., TrainingMethod]  # build(cfg, steps_per_epoch, **seams) -> TrainingMethod
    certified: bool = True  # trains for a certified radius (has an ACR to trade, so it is searched)


TRAINING_METHODS: Registry[MethodSpec] = Registry("training method")


def register_method(name: str, params: type = NoParams, *, certified: bool = True):
    """Decorator registering a method's builder under ``name`` with its params dataclass."""

    def deco(build: Callable[..., TrainingMethod]) -> Callable[..., TrainingMethod]:
        TRAINING_METHODS.register(name, MethodSpec(name, params, build, certified))
        return build

    return deco


def build_method(cfg: TrainConfig, steps_per_epoch: int, **seams) -> TrainingMethod:
    """The training method of ``cfg``; ``seams`` replace components (benchmarks inject counters)."""
    return TRAINING_METHODS.get(cfg.method).build(cfg, steps_per_epoch, **seams)


def certified_methods() -> tuple[str, ...]:
    return tuple(n for n, spec in TRAINING_METHODS.items() if spec.certified)


def standard_step(model: nn.Sequential, x: Tensor, y: Tensor) -> StepOutput:
    logits = model(x)
    return StepOutput(F.cross_entropy(logits, y), logits, 0.0, 0.0)


def robust_ce(margin_lb: Tensor) -> Tensor:
    """Cross-entropy on margin lower bounds (IBP training, Gowal et al. 2018): the worst-case
    logits are -lb for j != y and 0 for the true class."""
    worst = torch.cat([torch.zeros_like(margin_lb[:, :1]), -margin_lb], dim=1)
    return F.cross_entropy(worst, torch.zeros(worst.shape[0], dtype=torch.long, device=worst.device))


def mixed_loss(margin_lb: Tensor, logits: Tensor, y: Tensor, kappa: float) -> Tensor:
    """(1 - kappa) * L_rob + kappa * L_std (the loss mixing of the paper)."""
    loss = robust_ce(margin_lb)
    if kappa > 0:
        loss = (1 - kappa) * loss + kappa * F.cross_entropy(logits, y)
    return loss
