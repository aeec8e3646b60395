"""auto_LiRPA's loss fusion as the cross-check of ``trainers.bounds.fusion.crown_ibp_ce_upper``.

``auto_lirpa_fused_ce_upper(model, x, y, eps, betas)`` computes, for each beta, the per-sample
upper bound of the cross-entropy over the clipped eps-box the way auto_LiRPA's loss-fusion
training does (its CIFAR training example): the model wrapped in ``CrossEntropyWrapper``
(output sum_j exp(z_j - z_y)), ``bound_opts={"loss_fusion": True, "relu": "adaptive"}``, one
``compute_bounds(method="IBP", bound_upper=True)`` and one ``method="CROWN-IBP"`` upper bound
of the wrapper's output, mixed as beta * CROWN-IBP + (1 - beta) * IBP, then
log(bound) + the exponential node's ``max_input`` (the shift M it subtracts against overflow).
Train mode: a clean forward pass first (BatchNorm statistics of the clean batch), as in
``tests.lirpa.backend``.

Two workarounds for auto_LiRPA 0.3 under torch 2.x, neither of which changes a bound:

* the TorchScript exporter registers the symbolic functions of opsets 10 and above only when
  their modules are imported; until then ``torch.gather`` (the wrapper's) is exported with
  the opset-9 function, as OneHot, which auto_LiRPA does not support, although it sets opset
  12. Importing them gives ``GatherElements`` (auto_LiRPA's ``BoundGatherElements``);
* ``BoundGatherElements.bound_backward`` allocates its A matrix with ``torch.zeros`` of the
  default dtype, so float64 bounds run with float64 as the default dtype.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tests.lirpa.backend import _lirpa_friendly, _load
from trainers.bounds.engine import input_box, layers_of


def _register_gather_elements() -> None:
    for opset in (10, 11, 12):
        importlib.import_module(f"torch.onnx._internal.torchscript_exporter.symbolic_opset{opset}")


@torch.no_grad()
def auto_lirpa_fused_ce_upper(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, betas: Sequence[float] = (0.0, 1.0)
) -> dict[float, Tensor]:
    """beta -> per-sample upper bounds [B] of CE(f(x'), y) by auto_LiRPA's loss fusion."""
    lirpa = _load()
    from tests.lirpa import compat as _lirpa_compat

    layers_of(model)  # the native engine's model restrictions
    _register_gather_elements()
    before = torch.get_default_dtype()
    torch.set_default_dtype(x.dtype)
    try:
        wrapped = lirpa.CrossEntropyWrapper(_lirpa_friendly(copy.deepcopy(model).eval()))
        labels = y.to(device=x.device, dtype=torch.long)
        with _lirpa_compat.quiet_exporter():
            bounded = lirpa.BoundedModule(
                wrapped,
                (torch.zeros_like(x), labels),
                bound_opts={"relu": "adaptive", "loss_fusion": True},
                device=x.device,
            )
        bounded.train(model.training)
        bounded(x, labels)  # train mode: BatchNorm statistics of this clean batch
        lo, hi = input_box(x, eps)
        ptb = lirpa.PerturbationLpNorm(
            norm=float("inf"), eps=eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1))), x_L=lo, x_U=hi
        )
        bx = lirpa.BoundedTensor(x, ptb)
        exp_node = next(m for m in bounded.modules() if type(m).__name__ == "BoundExp")
        _, s_ibp = bounded.compute_bounds(x=(bx, labels), method="IBP", bound_lower=False)
        shift_ibp = exp_node.max_input.reshape(-1)
        _, s_crown = bounded.compute_bounds(x=(bx, labels), method="CROWN-IBP", bound_lower=False)
        shift = exp_node.max_input.reshape(-1)
    finally:
        torch.set_default_dtype(before)
    # both passes shift by the maximum upper bound of the same IBP intervals
    assert torch.equal(shift, shift_ibp), "auto_LiRPA's IBP and CROWN-IBP passes shifted differently"
    out = {}
    for beta in betas:
        mixed = beta * s_crown.reshape(-1) + (1 - beta) * s_ibp.reshape(-1)
        out[beta] = (torch.log(mixed) + shift).detach()
    return out
