"""The training-method interface: one class per method, one place that computes its loss.

A method sees the model, a clean batch and the global step, and returns the loss and a few
statistics. The training loop (``trainers.train``) knows nothing else about it, so adding
SABR or MTL-IBP is one new file plus one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.config import TrainConfig
from trainers.schedules import eps_max_at, linear, ramp_progress


@dataclass
class StepOutput:
    loss: Tensor
    logits: Tensor  # clean logits (for training accuracy)
    mean_radius: float  # mean training radius of the batch
    eps_max: float  # eps_max(t) at this step


class Method:
    """Base class: the schedules every certified method shares."""

    name = "base"

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.std_steps = cfg.std_epochs * steps_per_epoch
        self.ramp_steps = cfg.ramp_epochs * steps_per_epoch
        self.total_steps = cfg.epochs * steps_per_epoch
        self.max_eps = cfg.train_max_eps

    def eps_max(self, step: int) -> float:
        return eps_max_at(
            step, std_steps=self.std_steps, ramp_steps=self.ramp_steps, max_eps=self.max_eps, shape=self.cfg.ramp_shape
        )

    def ramp(self, step: int) -> float:
        return ramp_progress(step, std_steps=self.std_steps, ramp_steps=self.ramp_steps)

    def kappa(self, step: int) -> float:
        """Loss-mixing weight of the standard loss, linear to ``kappa_final`` over training."""
        end = self.cfg.kappa if self.cfg.kappa_final is None else self.cfg.kappa_final
        return linear(self.cfg.kappa, end, step / max(1, self.total_steps - 1))

    def step(self, model: nn.Sequential, x: Tensor, y: Tensor, step: int) -> StepOutput:
        raise NotImplementedError


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
