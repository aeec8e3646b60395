"""Standard (clean) training: the accuracy end of every frontier."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from trainers.methods.base import Method, StepOutput


class Standard(Method):
    name = "standard"

    def step(self, model: nn.Sequential, x: Tensor, y: Tensor, step: int) -> StepOutput:
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), logits, 0.0, 0.0)
