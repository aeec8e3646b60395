"""Native interval bound propagation (IBP) for the sequential models of ``trainers.models``.

Everything here works on a batch with one l_inf radius per sample (``eps`` of shape [B]):
ACERT trains every sample at its own radius. The input box is clipped to the valid domain
[0, 1] *before* the normalisation layer, so radii are in pixel units and the bounds see the
normalisation.

IBP is computed in centre/radius form (Gowal et al. 2018): an affine layer maps the centre
with W and the radius with |W|, which costs two matrix products instead of the four of the
lower/upper form. The margin specification ``z_y - z_j`` is folded into the last linear
layer (W' = C W, b' = C b), which is tighter than bounding the logits first (STACK.md).

BatchNorm in train mode uses the statistics of the *clean* batch for the bound pass too
(the convention of Shi et al. 2021 and auto_LiRPA): ``clean_pass`` computes them once and
stores the resulting per-channel affine maps in a :class:`BoundContext`, so that repeated
bound evaluations on sub-batches (the radius root solver) see the same normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.models import Normalize

AFFINE_PER_CHANNEL = (Normalize, nn.BatchNorm1d, nn.BatchNorm2d)
SUPPORTED = (Normalize, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Flatten)


@dataclass
class BoundContext:
    """Per-layer state shared by the clean pass and the bound passes of one batch."""

    # layer index -> (scale, shift) of each per-channel affine layer (Normalize, BatchNorm)
    affines: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # layer index of a ReLU -> (lower, upper) pre-activation bounds (filled when recording)
    preact: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The layers of a supported sequential model; anything else is rejected by name."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"the bound engine needs an nn.Sequential model, got {type(model).__name__}")
    layers = list(model)
    for i, layer in enumerate(layers):
        if not isinstance(layer, SUPPORTED):
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise TypeError(f"layer {i} ({type(layer).__name__}) is not supported; supported: {names}")
        if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise TypeError(f"layer {i}: only zero-padded, ungrouped Conv2d is supported")
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise TypeError("the last layer must be nn.Linear (the margin specification is folded into it)")
    return layers


def _channel_view(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast over an activation of ``ndim`` dims."""
    return v.view(1, -1, *([1] * (ndim - 2)))


def _normalize_affine(layer: Normalize) -> tuple[Tensor, Tensor]:
    std = layer.std.reshape(-1)
    return 1.0 / std, -layer.mean.reshape(-1) / std


def _batchnorm_affine(layer: nn.BatchNorm1d | nn.BatchNorm2d, act: Tensor | None, update_stats: bool):
    """Scale/shift of a BatchNorm layer: batch statistics of ``act`` in train mode, else running ones."""
    use_batch = layer.training or layer.running_mean is None
    if use_batch:
        if act is None:
            raise RuntimeError("a BatchNorm layer in train mode needs the clean batch: call clean_pass first")
        dims = [0] + list(range(2, act.dim()))
        mean = act.mean(dims)
        var = act.var(dims, unbiased=False)
        if update_stats and layer.training and layer.running_mean is not None:
            _update_running_stats(layer, mean.detach(), var.detach(), act.numel() // act.shape[1])
    else:
        mean, var = layer.running_mean, layer.running_var
    scale = torch.rsqrt(var + layer.eps)
    if layer.affine:
        scale = scale * layer.weight
        shift = layer.bias - mean * scale
    else:
        shift = -mean * scale
    return scale, shift


@torch.no_grad()
def _update_running_stats(layer: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, n: int) -> None:
    """What ``F.batch_norm(training=True)`` does to the running statistics."""
    layer.num_batches_tracked += 1
    momentum = layer.momentum if layer.momentum is not None else 1.0 / float(layer.num_batches_tracked)
    unbiased = var * n / max(n - 1, 1)
    layer.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
    layer.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def _affine_of(i: int, layer: nn.Module, ctx: BoundContext, act: Tensor | None, update: bool):
    if i not in ctx.affines:
        if isinstance(layer, Normalize):
            ctx.affines[i] = _normalize_affine(layer)
        else:
            ctx.affines[i] = _batchnorm_affine(layer, act, update)
    return ctx.affines[i]


def input_box(x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
    """The l_inf box of per-sample radius ``eps`` around ``x``, clipped to [0, 1]."""
    if eps.dim() != 1 or eps.shape[0] != x.shape[0]:
        raise ValueError(f"eps must have shape [{x.shape[0]}], got {tuple(eps.shape)}")
    e = eps.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return (x - e).clamp(0.0, 1.0), (x + e).clamp(0.0, 1.0)


def propagate(
    layers: list[nn.Module],
    ctx: BoundContext,
    *,
    clean: Tensor | None = None,
    box: tuple[Tensor, Tensor] | None = None,
    update_stats: bool = False,
    record_preact: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Push a clean batch and/or an input box through all layers but the last.

    Returns (clean features, centre, radius) at the input of the last linear layer. When both
    a clean batch and a box are given, each weight layer runs once on their concatenation:
    the clean pass, needed anyway for BatchNorm statistics and the standard loss, shares the
    matrix product with the centre.
    """
    c = r = None
    if box is not None:
        lo, hi = box
        c, r = (hi + lo) / 2, (hi - lo) / 2
    n_clean = 0 if clean is None else clean.shape[0]
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            parts = [t for t in (clean, c) if t is not None]
            out = layer(torch.cat(parts) if len(parts) == 2 else parts[0])
            if c is not None:
                absw = layer.weight.abs()
                if isinstance(layer, nn.Conv2d):
                    r = F.conv2d(r, absw, None, layer.stride, layer.padding, layer.dilation)
                else:
                    r = F.linear(r, absw)
            if clean is not None and c is not None:
                clean, c = out[:n_clean], out[n_clean:]
            elif clean is not None:
                clean = out
            else:
                c = out
        elif isinstance(layer, AFFINE_PER_CHANNEL):
            scale, shift = _affine_of(i, layer, ctx, clean, update_stats)
            if clean is not None:
                clean = clean * _channel_view(scale, clean.dim()) + _channel_view(shift, clean.dim())
            if c is not None:
                c = c * _channel_view(scale, c.dim()) + _channel_view(shift, c.dim())
                r = r * _channel_view(scale.abs(), r.dim())
        elif isinstance(layer, nn.ReLU):
            if clean is not None:
                clean = F.relu(clean)
            if c is not None:
                lo, hi = c - r, c + r
                if record_preact:
                    ctx.preact[i] = (lo, hi)
                lo, hi = F.relu(lo), F.relu(hi)
                c, r = (hi + lo) / 2, (hi - lo) / 2
        elif isinstance(layer, nn.Flatten):
            clean = None if clean is None else layer(clean)
            if c is not None:
                c, r = layer(c), layer(r)
    return clean, c, r


def other_classes(y: Tensor, num_classes: int) -> Tensor:
    """Indices j != y_b for each sample, in increasing order: shape [B, K-1]."""
    ar = torch.arange(num_classes - 1, device=y.device).expand(y.shape[0], -1)
    return ar + (ar >= y[:, None]).long()


def spec_last_layer(last: nn.Linear, y: Tensor) -> tuple[Tensor, Tensor]:
    """The last layer with the margin specification folded in: W'[b, j] = W[y_b] - W[j_b]."""
    others = other_classes(y, last.out_features)
    w = last.weight
    wspec = w[y][:, None, :] - w[others]  # [B, K-1, H]
    if last.bias is None:
        bspec = torch.zeros(wspec.shape[:2], dtype=w.dtype, device=w.device)
    else:
        bspec = last.bias[y][:, None] - last.bias[others]
    return wspec, bspec


def margins_from_interval(last: nn.Linear, c: Tensor, r: Tensor, y: Tensor) -> Tensor:
    """Lower bounds of z_y - z_j (j != y) given the interval (c, r) at the last layer's input."""
    wspec, bspec = spec_last_layer(last, y)
    centre = torch.einsum("bkh,bh->bk", wspec, c) + bspec
    radius = torch.einsum("bkh,bh->bk", wspec.abs(), r)
    return centre - radius


def clean_pass(model: nn.Sequential, x: Tensor, *, update_stats: bool = False) -> tuple[Tensor, BoundContext]:
    """Clean logits and the context (per-channel affine maps) that bound passes reuse."""
    layers = layers_of(model)
    ctx = BoundContext()
    feats, _, _ = propagate(layers, ctx, clean=x, update_stats=update_stats)
    return layers[-1](feats), ctx


def ibp_margins(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, ctx: BoundContext | None = None,
    *, record_preact: bool = False,
) -> Tensor:
    """IBP lower bounds of the margins z_y - z_j, j != y: shape [B, K-1].

    ``ctx`` must come from ``clean_pass`` on a batch containing these samples when the model
    has BatchNorm layers in train mode; in eval mode it may be omitted.
    """
    layers = layers_of(model)
    if ctx is None:
        ctx = BoundContext()
        if model.training and any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in layers):
            _, ctx = clean_pass(model, x)
    _, c, r = propagate(layers, ctx, box=input_box(x, eps), record_preact=record_preact)
    return margins_from_interval(layers[-1], c, r, y)


def joint_ibp(
    model: nn.Sequential, x: Tensor, y: Tensor, eps: Tensor, *, update_stats: bool = True,
    record_preact: bool = False,
) -> tuple[Tensor, Tensor, BoundContext]:
    """Clean logits and IBP margin bounds in one pass (training): (logits, margins, ctx)."""
    layers = layers_of(model)
    ctx = BoundContext()
    feats, c, r = propagate(
        layers, ctx, clean=x, box=input_box(x, eps), update_stats=update_stats, record_preact=record_preact
    )
    return layers[-1](feats), margins_from_interval(layers[-1], c, r, y), ctx
