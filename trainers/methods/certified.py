"""Certified training composed from its parts: a radius schedule, a radius policy, a margin
bound and the loss mixing, plus the Shi et al. 2021 regulariser during the ramp.

One step: eps_max(t) from the schedule; before the ramp, standard training. Then the radius
policy picks each sample's radius (the same eps_max(t) for every sample, or ACERT's adaptive
radii, which need the clean pass first); one IBP pass bounds the margins (jointly with the clean
pass when nothing needed it earlier), the margin policy may refine them (CROWN-IBP), and the
loss is (1 - kappa) L_rob + kappa L_std (+ the regulariser).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from trainers.bounds import clean_pass, ibp_margins, joint_ibp
from trainers.bounds.engine import BoundContext, input_box
from trainers.methods.base import StepOutput, mixed_loss, standard_step
from trainers.methods.regularizers import shi_regularizer
from trainers.schedules import eps_max_at, linear, ramp_progress, reg_weight_at

if TYPE_CHECKING:
    from trainers.config import TrainConfig


class Schedule:
    """The schedules of a run, in steps: eps_max(t), ramp progress, kappa(t), regulariser weight."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.std_steps = cfg.std_epochs * steps_per_epoch
        self.ramp_steps = cfg.ramp_epochs * steps_per_epoch
        self.total_steps = cfg.epochs * steps_per_epoch
        self.max_eps = cfg.train_max_eps

    def eps_max(self, step: int) -> float:
        return eps_max_at(
            step,
            std_steps=self.std_steps,
            ramp_steps=self.ramp_steps,
            max_eps=self.max_eps,
            shape=self.cfg.ramp_shape,
        )

    def ramp(self, step: int) -> float:
        return ramp_progress(step, std_steps=self.std_steps, ramp_steps=self.ramp_steps)

    def kappa(self, step: int) -> float:
        """Loss-mixing weight of the standard loss, linear to ``kappa_final`` over training."""
        end = self.cfg.kappa if self.cfg.kappa_final is None else self.cfg.kappa_final
        return linear(self.cfg.kappa, end, step / max(1, self.total_steps - 1))

    def reg_weight(self, eps_t: float) -> float:
        return reg_weight_at(eps_t, self.max_eps, self.cfg.reg_weight)


class RadiusPolicy(Protocol):
    """Which radius each sample of a batch is trained at.

    ``idx`` are the samples' positions in the training split (None when the caller has none),
    for policies that keep per-sample state across epochs; such a policy also has
    ``state_dict()`` / ``load_state_dict()`` (saved with the checkpoint) and may look at the
    bound pass it led to with ``after_bounds(...) -> margins``."""

    needs_clean: bool  # True: called with the clean pass of the batch (logits, ctx)

    def __call__(
        self,
        model: nn.Sequential,
        x: Tensor,
        y: Tensor,
        eps_t: float,
        *,
        clean: tuple[Tensor, BoundContext] | None,
        regularising: bool,
        idx: Tensor | None,
    ) -> Tensor: ...


class FixedRadius:
    """Every sample at eps_max(t) (IBP, CROWN-IBP)."""

    needs_clean = False

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False, idx=None) -> Tensor:
        return torch.full((x.shape[0],), eps_t, dtype=x.dtype, device=x.device)


class MarginPolicy(Protocol):
    needs_preact: bool  # True: needs the pre-activation bounds recorded by the IBP pass

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


class CertifiedTraining:
    """A certified training method: schedule x radius policy x margin bound x loss mixing."""

    def __init__(
        self,
        cfg: TrainConfig,
        steps_per_epoch: int,
        *,
        radius: RadiusPolicy,
        margins: MarginPolicy | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.cfg = cfg
        self.schedule = schedule or Schedule(cfg, steps_per_epoch)
        self.radius = radius
        self.margins = margins or IBPMargins()

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def state_dict(self) -> dict:
        return self.radius.state_dict() if hasattr(self.radius, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if state and hasattr(self.radius, "load_state_dict"):
            self.radius.load_state_dict(state)

    def step(
        self, model: nn.Sequential, x: Tensor, y: Tensor, step: int, idx: Tensor | None = None
    ) -> StepOutput:
        eps_t = self.schedule.eps_max(step)
        if eps_t <= 0.0:
            return standard_step(model, x, y)
        reg_w = self.schedule.reg_weight(eps_t)
        record = reg_w > 0 or self.margins.needs_preact
        if self.radius.needs_clean:
            # the clean pass of the loss (autograd, running statistics updated) comes first, so
            # that the radius policy reuses its logits and BatchNorm statistics
            logits, ctx = clean_pass(model, x, update_stats=True)
            eps = self.radius(
                model, x, y, eps_t, clean=(logits.detach(), ctx), regularising=reg_w > 0, idx=idx
            )
            ctx.preact.clear()
            lb = ibp_margins(model, x, y, eps, ctx, record_preact=record)
        else:
            eps = self.radius(model, x, y, eps_t, clean=None, regularising=reg_w > 0, idx=idx)
            logits, lb, ctx = joint_ibp(model, x, y, eps, record_preact=record)
        if hasattr(self.radius, "after_bounds"):
            lb = self.radius.after_bounds(model, x, y, idx, eps, eps_t, logits, lb, ctx)
        lb = self.margins(model, x, y, eps, lb, ctx, step)
        loss = mixed_loss(lb, logits, y, self.schedule.kappa(step))
        if reg_w > 0:
            loss = loss + reg_w * shi_regularizer(ctx, normalised_radius(model, x, eps), self.cfg.reg_tol)
        return StepOutput(loss, logits, eps.detach().mean(), eps_t)


def normalised_radius(model: nn.Sequential, x: Tensor, eps: Tensor) -> Tensor:
    """Radius of the clipped input box after the model's normalisation layer."""
    lo, hi = input_box(x, eps)
    return (hi - lo) / 2 / model[0].std
