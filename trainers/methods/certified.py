"""The one training step of every certified method, from its parts: the schedule, a radius
policy (``trainers.radius``) and a loss (``trainers.methods.losses``), plus the Shi et al. 2021
regulariser during the ramp.

One step: eps_max(t) from the schedule; before the ramp, standard training. Then the radius
policy picks each sample's radius (the same eps_max(t) for every sample, or ACERT's adaptive
radii, which need the clean pass first). If the loss wants them, one IBP pass bounds the margins
at those radii (jointly with the clean pass when nothing needed it earlier) and the radius policy
sees them (``after_bounds``); otherwise only the clean pass runs (running BatchNorm statistics
updated once, by the clean batch, either way). The loss turns all that into a number; the
regulariser is added on the pre-activation bounds that were recorded (by the IBP pass, or by the
loss's own bound pass, whose input box it then returns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from trainers.bounds import clean_pass, ibp_margins, joint_ibp
from trainers.bounds.engine import BoundContext, input_box
from trainers.methods.base import MethodBase, StepOutput, standard_step
from trainers.methods.losses import Loss, LossInput, MarginBound, standard_mixing
from trainers.methods.regularizers import shi_regularizer
from trainers.radius.base import RadiusPolicy
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


class CertifiedTraining(MethodBase):
    """A certified training method: schedule x radius policy x (bound x) loss.

    ``loss`` defaults to the standard mixing around the robust CE of ``margins`` (the IBP
    margins by default; CROWN-IBP passes its refinement); give one or the other."""

    def __init__(
        self,
        cfg: TrainConfig,
        steps_per_epoch: int,
        *,
        radius: RadiusPolicy,
        margins: MarginBound | None = None,
        loss: Loss | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        if loss is not None and margins is not None:
            raise ValueError("give a loss or the margins of the standard loss, not both")
        self.cfg = cfg
        self.schedule = schedule or Schedule(cfg, steps_per_epoch)
        self.radius = radius
        self.loss = loss if loss is not None else standard_mixing(margins)

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def state_dict(self) -> dict:
        return self.radius.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.radius.load_state_dict(state)

    def step(
        self, model: nn.Sequential, x: Tensor, y: Tensor, step: int, idx: Tensor | None = None
    ) -> StepOutput:
        eps_t = self.schedule.eps_max(step)
        if eps_t <= 0.0:
            return standard_step(model, x, y)
        reg_w = self.schedule.reg_weight(eps_t)
        logits, eps, lb, ctx = self._passes(model, x, y, eps_t, idx, regularising=reg_w > 0)
        inp = LossInput(model, x, y, eps, logits, lb, ctx, step, self.schedule, record_preact=reg_w > 0)
        out = self.loss(inp)
        loss = out.loss
        if reg_w > 0:
            box = out.box if out.box is not None else input_box(x, eps)
            loss = loss + reg_w * shi_regularizer(ctx, box_radius(model, box), self.cfg.reg_tol)
        return StepOutput(loss, logits, eps.detach().mean(), eps_t)

    def _passes(
        self,
        model: nn.Sequential,
        x: Tensor,
        y: Tensor,
        eps_t: float,
        idx: Tensor | None,
        *,
        regularising: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None, BoundContext]:
        """The radii and the passes the loss asked for: (clean logits, eps, IBP margins or None, ctx)."""
        ibp = self.loss.wants_ibp(regularising)
        record = ibp and (regularising or self.loss.needs_preact)
        if self.radius.needs_clean:
            # the clean pass of the loss (autograd, running statistics updated) comes first, so
            # that the radius policy reuses its logits and BatchNorm statistics
            logits, ctx = clean_pass(model, x, update_stats=True)
            clean = (logits.detach(), ctx)
            eps = self.radius(model, x, y, eps_t, clean=clean, regularising=regularising, idx=idx)
            ctx.preact.clear()
            lb = ibp_margins(model, x, y, eps, ctx, record_preact=record) if ibp else None
        else:
            eps = self.radius(model, x, y, eps_t, clean=None, regularising=regularising, idx=idx)
            if ibp:
                logits, lb, ctx = joint_ibp(model, x, y, eps, record_preact=record)
            else:
                (logits, ctx), lb = clean_pass(model, x, update_stats=True), None
        if lb is not None:
            lb = self.radius.after_bounds(model, x, y, idx, eps, eps_t, logits, lb, ctx)
        return logits, eps, lb, ctx


def box_radius(model: nn.Sequential, box: tuple[Tensor, Tensor]) -> Tensor:
    """Radius of an input box after the model's normalisation layer."""
    lo, hi = box
    return (hi - lo) / 2 / model[0].std


def normalised_radius(model: nn.Sequential, x: Tensor, eps: Tensor) -> Tensor:
    """Radius of the clipped input box of radius eps after the model's normalisation layer."""
    return box_radius(model, input_box(x, eps))
