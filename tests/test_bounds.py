"""Soundness of the native bound engine: the most important tests of the project.

For random nets (with padding, stride, BatchNorm in train and eval mode) and per-sample
radii, the true margins of many sampled points and of PGD-attacked points inside the
clipped eps-box must lie above the computed lower bounds, in float32. CROWN-IBP is checked
for soundness, never for being tighter than IBP (it is not always).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from trainers.bounds import BOUND_METHODS, clean_pass, crown_ibp_margins, ibp_margins, joint_ibp, margin_lower
from trainers.bounds.engine import input_box, other_classes
from trainers.models import Normalize

# Rounding slack for float32 comparisons (the bounds themselves are never loosened).
ATOL = 1e-4


def _conv(t, w, b, *, stride, padding):
    return nn.functional.conv2d(t, w, b, stride, padding)


def true_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    others = other_classes(y, logits.shape[1])
    return logits.gather(1, y[:, None]) - logits.gather(1, others)


def conv_net(c=2, k=5, bn=True, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [Normalize((0.4,) * c, (0.3,) * c), nn.Conv2d(c, 6, 3, stride=1, padding=1)]
    layers += [nn.BatchNorm2d(6)] if bn else []
    layers += [nn.ReLU(), nn.Conv2d(6, 8, 4, stride=2, padding=1)]
    layers += [nn.BatchNorm2d(8)] if bn else []
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16)]
    layers += [nn.BatchNorm1d(16)] if bn else []
    layers += [nn.ReLU(), nn.Linear(16, k)]
    net = nn.Sequential(*layers)
    for m in net.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, -1.5, 1.5)  # negative scales exercise |scale|
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net


def mlp(d=12, k=4, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize((0.5,), (0.25,)),
        nn.Flatten(),
        nn.Linear(d, 20),
        nn.ReLU(),
        nn.Linear(20, 20),
        nn.ReLU(),
        nn.Linear(20, k),
    )


def sample_box(x, eps, n):
    lo, hi = input_box(x, eps)
    u = torch.rand((n, *x.shape), generator=torch.Generator().manual_seed(1))
    # half of the samples at the corners of the box, where ReLU nets attain extremes
    u[: n // 2] = (u[: n // 2] > 0.5).float()
    return lo + u * (hi - lo)


def pgd_min_margin(model, x, y, eps, steps=40):
    """Points of the clipped box that minimise the smallest margin (PGD with sign steps)."""
    lo, hi = input_box(x, eps)
    xa = (lo + hi) / 2 + (torch.rand_like(x) - 0.5) * (hi - lo)
    step = (hi - lo) / 8
    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        m = true_margins(model, xa, y).min(1).values.sum()
        (g,) = torch.autograd.grad(m, xa)
        xa = torch.minimum(torch.maximum(xa - step * g.sign(), lo), hi)
    return xa.detach()


def check_sound(model, x, y, eps, method, train_mode_ctx=None, n_samples=64):
    bound_fn = BOUND_METHODS[method]
    with torch.no_grad():
        lb = bound_fn(model, x, y, eps, train_mode_ctx)
    assert lb.dtype == torch.float32 and lb.shape == (x.shape[0], model[-1].out_features - 1)
    # In train mode the truth is the net with BatchNorm frozen at the clean-batch statistics.
    truth = model if train_mode_ctx is None else frozen_bn_copy(model, train_mode_ctx)
    pts = sample_box(x, eps, n_samples)
    with torch.no_grad():
        for p in pts:
            assert (true_margins(truth, p, y) >= lb - ATOL).all(), f"{method}: sampled point below bound"
    adv = pgd_min_margin(truth, x, y, eps)
    with torch.no_grad():
        gap = true_margins(truth, adv, y) - lb
    assert (gap >= -ATOL).all(), f"{method}: PGD point below bound by {-gap.min():.3g}"
    return lb


def frozen_bn_copy(model, ctx):
    """Replace each BatchNorm by the affine map the bound pass used (clean-batch statistics)."""
    layers = []
    for i, m in enumerate(model):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale, shift = (t.detach() for t in ctx.affines[i])
            layers.append(_Affine(scale, shift))
        else:
            layers.append(m)
    return nn.Sequential(*layers)


class _Affine(nn.Module):
    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(view) + self.shift.view(view)


@pytest.mark.parametrize("method", BOUND_METHODS.names())  # every registered bound method
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv_bn_eval_sound(method, seed):
    net = conv_net(seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((6, 2, 8, 8), generator=g)
    x[0] = 0.0  # a corner of the domain: clipping matters
    y = torch.randint(0, 5, (6,), generator=g)
    eps = torch.tensor([0.0, 0.001, 0.01, 0.03, 0.1, 0.3])
    check_sound(net, x, y, eps, method)


@pytest.mark.parametrize("method", BOUND_METHODS.names())
def test_conv_bn_train_mode_sound_with_clean_batch_statistics(method):
    net = conv_net(seed=3).train()
    x = torch.rand((8, 2, 8, 8), generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 5
    eps = torch.linspace(0.0, 0.08, 8)
    with torch.no_grad():
        _, ctx = clean_pass(net, x)
    check_sound(net, x, y, eps, method, train_mode_ctx=ctx)


@pytest.mark.parametrize("method", BOUND_METHODS.names())
def test_mlp_sound_many_radii(method):
    net = mlp(seed=4)
    x = torch.rand((16, 1, 3, 4), generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(5))
    eps = torch.logspace(-4, 0, 16)
    check_sound(net, x, y, eps, method)


def test_one_layer_ibp_is_exact():
    """On a single linear layer, IBP (with the spec folded in) equals the exact minimum."""
    torch.manual_seed(0)
    net = nn.Sequential(Normalize((0.0,), (1.0,)), nn.Flatten(), nn.Linear(6, 3)).eval()
    x = torch.rand(5, 1, 2, 3) * 0.6 + 0.2
    y = torch.tensor([0, 1, 2, 0, 1])
    eps = torch.tensor([0.0, 0.05, 0.1, 0.15, 0.2])
    lb = ibp_margins(net, x, y, eps)
    w, b = net[-1].weight, net[-1].bias
    others = other_classes(y, 3)
    wd = w[y][:, None, :] - w[others]  # [B, 2, 6]
    lo, hi = input_box(x, eps)
    # exact minimum of a linear function over a box: each coordinate at the end picked by the sign
    xmin = torch.where(wd > 0, lo.flatten(1)[:, None, :], hi.flatten(1)[:, None, :])
    exact = (wd * xmin).sum(-1) + b[y][:, None] - b[others]
    torch.testing.assert_close(lb, exact, atol=1e-5, rtol=1e-5)


def test_zero_radius_bound_equals_clean_margin():
    net = conv_net(seed=5).eval()
    x = torch.rand(4, 2, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    eps = torch.zeros(4)
    with torch.no_grad():
        for method in BOUND_METHODS:
            torch.testing.assert_close(
                margin_lower(net, x, y, eps, method), true_margins(net, x, y), atol=1e-4, rtol=1e-4
            )


def test_bounds_shrink_monotonically_for_ibp():
    net = conv_net(seed=6).eval()
    x = torch.rand(1, 2, 8, 8).expand(5, -1, -1, -1).contiguous()
    y = torch.zeros(5, dtype=torch.long)
    eps = torch.tensor([0.0, 0.01, 0.02, 0.05, 0.1])
    lb = ibp_margins(net, x, y, eps).min(1).values
    assert (lb[1:] <= lb[:-1] + 1e-6).all()


def test_joint_pass_matches_separate_passes_and_updates_running_stats_once():
    net = conv_net(seed=7).train()
    x = torch.rand(6, 2, 8, 8)
    y = torch.arange(6) % 5
    eps = torch.full((6,), 0.02)
    before = net[2].running_mean.clone()
    logits, lb, ctx = joint_ibp(net, x, y, eps)
    assert not torch.equal(before, net[2].running_mean)
    assert int(net[2].num_batches_tracked) == 1
    with torch.no_grad():
        ref_logits = net(x)  # nn.BatchNorm in train mode: batch statistics
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lb, ibp_margins(net, x, y, eps, ctx), atol=1e-5, rtol=1e-5)


def test_crown_ibp_gradients_flow_and_not_assumed_tighter():
    net = conv_net(seed=8).eval()
    x = torch.rand(4, 2, 8, 8)
    y = torch.tensor([1, 2, 3, 4])
    eps = torch.full((4,), 0.05)
    lb = crown_ibp_margins(net, x, y, eps)
    lb.sum().backward()
    assert net[1].weight.grad is not None and torch.isfinite(net[1].weight.grad).all()


def test_unsupported_layer_and_bad_eps_are_rejected():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    with pytest.raises(TypeError, match="Tanh"):
        ibp_margins(net, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), torch.zeros(2))
    good = mlp()
    with pytest.raises(ValueError, match="eps must have shape"):
        ibp_margins(good, torch.rand(2, 1, 3, 4), torch.tensor([0, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match="unknown bound method 'no-such-bound'"):
        margin_lower(good, torch.rand(2, 1, 3, 4), torch.tensor([0, 1]), torch.zeros(2), "no-such-bound")


def reference_ibp(model, x, y, eps, preact: list | None = None):
    """Plain lower/upper IBP with autograd ops only (independent of the engine's folding,
    fused kernels and hand-written backward passes); BatchNorm from the clean batch. Given a
    list, ``preact`` receives (lower, upper) at the input of every ReLU, in order."""
    lo, hi = (x - eps.view(-1, 1, 1, 1)).clamp(0, 1), (x + eps.view(-1, 1, 1, 1)).clamp(0, 1)
    clean = x
    for layer in list(model)[:-1]:
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            dims = [0] + list(range(2, clean.dim()))
            mean, var = clean.mean(dims), clean.var(dims, unbiased=False)
            view = (1, -1) + (1,) * (clean.dim() - 2)
            scale = (layer.weight / torch.sqrt(var + layer.eps)).view(view)
            shift = layer.bias.view(view) - mean.view(view) * scale
            clean = clean * scale + shift
            lo, hi = (
                torch.minimum(lo * scale, hi * scale) + shift,
                torch.maximum(lo * scale, hi * scale) + shift,
            )
        elif isinstance(layer, (nn.Conv2d, nn.Linear)):
            wp, wn = layer.weight.clamp(min=0), layer.weight.clamp(max=0)
            if isinstance(layer, nn.Conv2d):
                op = functools.partial(_conv, stride=layer.stride, padding=layer.padding)
            else:
                op = nn.functional.linear
            clean = layer(clean)
            lo, hi = op(lo, wp, layer.bias) + op(hi, wn, None), op(hi, wp, layer.bias) + op(lo, wn, None)
        else:
            if preact is not None and isinstance(layer, nn.ReLU):
                preact.append((lo, hi))
            clean, lo, hi = layer(clean), layer(lo), layer(hi)
    last = model[-1]
    others = other_classes(y, last.out_features)
    wd = last.weight[y][:, None, :] - last.weight[others]
    bd = last.bias[y][:, None] - last.bias[others]
    return bd + (wd.clamp(min=0) * lo[:, None, :] + wd.clamp(max=0) * hi[:, None, :]).sum(-1)


def test_training_pass_values_and_gradients_match_a_plain_reference():
    """The fast training pass (BatchNorm folding, in-place interval ReLU, custom backward
    passes) gives the bounds and the parameter gradients of plain autograd IBP."""
    net = conv_net(seed=9).double().train()
    x = torch.rand(6, 2, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 5
    eps = torch.linspace(0.0, 0.05, 6, dtype=torch.float64)
    _, lb, _ = joint_ibp(net, x, y, eps, update_stats=False)
    grads = torch.autograd.grad(lb.square().sum(), list(net.parameters()))
    ref = reference_ibp(net, x, y, eps)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(net.parameters()))
    torch.testing.assert_close(lb, ref, rtol=1e-9, atol=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9)
