"""What a radius policy is: which radius each sample of a batch is trained at.

A policy is called once per step, before the bound pass, with eps_max(t) (the schedule's cap);
it returns the per-sample radii [B]. Its optional capabilities are declared on the protocol and
given no-op defaults by :class:`RadiusBase`, so the training step calls them unconditionally:

- ``needs_clean``: the policy wants the batch's clean pass (logits, BoundContext) first;
- ``after_bounds``: it sees the IBP margins the step computed at its radii (and may replace
  them, e.g. by clean margins for samples it no longer trusts), to update per-sample state;
- ``state_dict`` / ``load_state_dict``: per-sample state carried across epochs, saved with the
  checkpoint ({} for stateless policies).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from trainers.bounds.engine import BoundContext


class RadiusPolicy(Protocol):
    """``idx`` are the samples' positions in the training split (None when the caller has none)."""

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

    def after_bounds(
        self,
        model: nn.Sequential,
        x: Tensor,
        y: Tensor,
        idx: Tensor | None,
        eps: Tensor,
        eps_t: float,
        logits: Tensor,
        lb: Tensor,
        ctx: BoundContext,
    ) -> Tensor: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class RadiusBase:
    """The optional capabilities of :class:`RadiusPolicy`, as no-ops."""

    needs_clean = False

    def after_bounds(self, model, x, y, idx, eps, eps_t, logits, lb, ctx) -> Tensor:
        return lb

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class FixedRadius(RadiusBase):
    """Every sample at eps_max(t) (IBP, CROWN-IBP, MTL-IBP, SABR)."""

    def __call__(self, model, x, y, eps_t, *, clean=None, regularising=False, idx=None) -> Tensor:
        return torch.full((x.shape[0],), eps_t, dtype=x.dtype, device=x.device)
