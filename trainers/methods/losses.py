"""The loss part of a training method, and the losses every method shares.

A loss is called once per step, after the step's bound pass, with a :class:`LossInput`: the
model, the batch, each sample's training radius, the clean logits, the IBP margin lower bounds at
those radii (when the loss asked for them), the BoundContext of the batch (the clean batch's
BatchNorm maps; the IBP pass's pre-activation bounds when recorded), the step and the schedule.
It returns a :class:`LossOutput`: the loss, and the input box its own bound pass recorded when
that is not the eps box (for the Shi et al. regulariser, which the step adds).

What a loss declares (:class:`Loss`; :class:`LossBase` gives the defaults):

- ``wants_ibp(regularising)``: whether the step makes the joint clean + IBP pass at the radii
  (False: a clean pass only, and the loss bounds what it needs itself from ``ctx``, as SABR's
  small box or a CROWN-IBP that bounds the cross-entropy directly);
- ``needs_preact``: whether that IBP pass records pre-activation bounds even when the
  regulariser is off (CROWN-IBP's backward pass uses them).

The shared ones: :class:`MarginCE`, the robust cross-entropy of margin bounds (the IBP margins,
or a :class:`MarginBound` refinement of them such as CROWN-IBP's), and :class:`KappaMixing`,
(1 - kappa(t)) L_rob + kappa(t) L_std around any robust loss: every certified method mixes so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from trainers.bounds.engine import BoundContext
from trainers.methods.base import robust_ce

if TYPE_CHECKING:
    from trainers.methods.certified import Schedule


@dataclass
class LossInput:
    """What a loss may use, for one batch at one step."""

    model: nn.Sequential
    x: Tensor
    y: Tensor
    eps: Tensor  # [B] the training radius of each sample (the radius policy's)
    logits: Tensor  # clean logits, with autograd (the BatchNorm statistics of the clean batch)
    lb: Tensor | None  # IBP margin lower bounds [B, K-1] at eps; None if the loss wanted no IBP pass
    ctx: BoundContext  # the clean batch's per-channel maps (+ what the IBP pass recorded)
    step: int
    schedule: Schedule
    record_preact: bool  # the regulariser is on: a loss making its own bound pass records it in ctx


@dataclass
class LossOutput:
    loss: Tensor
    # the input box (lo, hi) of the bound pass the loss recorded in ctx, when not the clipped
    # eps box of the step's IBP pass (the regulariser's tightness term is relative to it)
    box: tuple[Tensor, Tensor] | None = None


class Loss(Protocol):
    needs_preact: bool  # the step's IBP pass records pre-activation bounds even without regulariser

    def wants_ibp(self, regularising: bool) -> bool:
        """Whether the step computes the IBP margins ``lb`` (a joint clean + IBP pass)."""
        ...

    def __call__(self, inp: LossInput) -> LossOutput: ...


class LossBase:
    """The defaults of :class:`Loss`: the step's IBP pass, without recorded bounds."""

    needs_preact = False

    def wants_ibp(self, regularising: bool) -> bool:
        return True


class MarginBound(Protocol):
    """Margin lower bounds [B, K-1] from the IBP ones ``lb`` (CROWN-IBP refines them)."""

    needs_preact: bool  # needs the pre-activation bounds recorded by the IBP pass

    def __call__(
        self,
        model: nn.Sequential,
        x: Tensor,
        y: Tensor,
        eps: Tensor,
        lb: Tensor,
        ctx: BoundContext,
        step: int,
    ) -> Tensor: ...


class IBPMargins:
    """The IBP margin bounds as they are."""

    needs_preact = False

    def __call__(self, model, x, y, eps, lb, ctx, step) -> Tensor:
        return lb


class MarginCE(LossBase):
    """L_rob: the robust cross-entropy (``robust_ce``) of the margins ``margins`` gives."""

    def __init__(self, margins: MarginBound | None = None) -> None:
        self.margins = margins or IBPMargins()
        self.needs_preact = self.margins.needs_preact

    def __call__(self, inp: LossInput) -> LossOutput:
        lb = self.margins(inp.model, inp.x, inp.y, inp.eps, inp.lb, inp.ctx, inp.step)
        return LossOutput(robust_ce(lb))


class KappaMixing:
    """(1 - kappa(t)) L_rob + kappa(t) L_std, L_rob = ``robust``'s loss, L_std the clean
    cross-entropy (the standard term is skipped while kappa(t) = 0)."""

    def __init__(self, robust: Loss) -> None:
        self.robust = robust
        self.needs_preact = robust.needs_preact

    def wants_ibp(self, regularising: bool) -> bool:
        return self.robust.wants_ibp(regularising)

    def __call__(self, inp: LossInput) -> LossOutput:
        out = self.robust(inp)
        kappa = inp.schedule.kappa(inp.step)
        if kappa <= 0:
            return out
        loss = (1 - kappa) * out.loss + kappa * F.cross_entropy(inp.logits, inp.y)
        return dataclasses.replace(out, loss=loss)


def standard_mixing(margins: MarginBound | None = None) -> KappaMixing:
    """The loss of IBP, CROWN-IBP and ACERT: kappa mixing around the robust CE of the margins."""
    return KappaMixing(MarginCE(margins))
