"""Standard (clean) training: the accuracy end of every frontier."""

from __future__ import annotations

from torch import Tensor, nn

from trainers.methods.base import MethodBase, StepOutput, register_method, standard_step


class Standard(MethodBase):
    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def step(
        self, model: nn.Sequential, x: Tensor, y: Tensor, step: int, idx: Tensor | None = None
    ) -> StepOutput:
        return standard_step(model, x, y)


@register_method("standard", certified=False)
def build(cfg, steps_per_epoch: int) -> Standard:
    return Standard(steps_per_epoch)
