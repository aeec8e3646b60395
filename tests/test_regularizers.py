"""The fused Shi et al. regulariser against the implementation it replaced.

``reference_shi_regularizer`` below is the former ``trainers.methods.regularizers.
shi_regularizer`` verbatim (elementwise autograd ops on the recorded (lower, upper) bounds,
mirroring ``compute_reg`` of Shi et al. 2021), kept as the reference. The fused version
(``RecordingIntervalReLU`` statistics plus scalar arithmetic) must give its value and its
parameter gradients up to rounding, on real bound passes mid-ramp, including layers without
an active or an inactive unit (whose term the reference skips as non-finite).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_bounds import reference_ibp
from trainers.bounds import engine
from trainers.bounds.engine import BoundContext, input_box, joint_ibp
from trainers.methods.regularizers import shi_regularizer
from trainers.models import Normalize, build_model, ibp_init


def reference_shi_regularizer(preact: list[tuple[torch.Tensor, torch.Tensor]], input_radius, tol=0.5):
    """The former implementation, reading a list of (lower, upper) pre-activation bounds."""
    tight0 = input_radius.mean()
    loss_tight = input_radius.new_zeros(())
    loss_relu = input_radius.new_zeros(())
    n = 0
    for lower, upper in preact:
        n += 1
        center, diff = (upper + lower) / 2, (upper - lower) / 2
        loss_tight = loss_tight + F.relu(tol - tight0 / diff.mean().clamp(min=1e-12)) / tol
        active, inactive = (lower > 0).to(center.dtype), (upper < 0).to(center.dtype)
        mean_act, mean_inact = (center * active).mean(), (center * inactive).mean()
        delta = (center - center.mean()) ** 2
        var_act, var_inact = (delta * active).sum(), (delta * inactive).sum()
        mean_ratio = mean_act / -mean_inact
        var_ratio = var_act / var_inact
        mean_ratio = torch.minimum(mean_ratio, 1 / mean_ratio.clamp(min=1e-12))
        var_ratio = torch.minimum(var_ratio, 1 / var_ratio.clamp(min=1e-12))
        term = (F.relu(tol - mean_ratio) + F.relu(tol - var_ratio)) / tol
        if torch.isfinite(term):  # a layer with no (in)active unit has no ratio: skip it
            loss_relu = loss_relu + term
    if n == 0:
        return loss_tight
    return (loss_tight + loss_relu) / n


def reference_pass(model: nn.Sequential, x, y, eps):
    """Plain autograd IBP in lower/upper form (tests.test_bounds.reference_ibp, independent of
    the engine): (margin lower bounds, [(lower, upper) at the input of every ReLU])."""
    preact: list = []
    return reference_ibp(model, x, y, eps, preact), preact


def input_radius(model, x, eps):
    lo, hi = input_box(x, eps)
    return (hi - lo) / 2 / model[0].std


def bn_net(seed: int, c: int = 2, k: int = 5) -> nn.Sequential:
    """Conv (padding, stride) and linear layers with BatchNorm, non-trivial affine parameters."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        Normalize((0.4,) * c, (0.3,) * c),
        nn.Conv2d(c, 6, 3, stride=1, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 4, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, k),
    )
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.uniform_(m.weight, -1.5, 1.5)  # negative scales exercise |scale|
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return net


def fused_and_reference(net, x, y, eps, *, independent: bool, tol: float = 0.5):
    """(value, parameter gradients) of the fused regulariser on the engine's pass and of the
    reference on either an independent plain pass or the bounds the engine recorded."""
    params = [p for p in net.parameters() if p.requires_grad]
    _, lb, ctx = joint_ibp(net, x, y, eps, update_stats=False, record_preact=True)
    radius = input_radius(net, x, eps)
    fused = shi_regularizer(ctx, radius, tol)
    if independent:
        _, preact = reference_pass(net, x, y, eps)
    else:
        preact = list(ctx.preact.values())
    ref = reference_shi_regularizer(preact, radius, tol)
    g_fused = torch.autograd.grad(fused, params, retain_graph=True, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    return (fused, g_fused), (ref, g_ref), ctx


def assert_same(fused, ref, rtol, atol):
    (v, grads), (rv, rgrads) = fused, ref
    torch.testing.assert_close(v, rv, rtol=rtol, atol=atol)
    for g, rg in zip(grads, rgrads, strict=True):
        g = torch.zeros_like(rg) if g is None and rg is not None else g
        rg = torch.zeros_like(g) if rg is None and g is not None else rg
        if g is not None:
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, rg, rtol=rtol, atol=atol)


def layer_counts(ctx: BoundContext) -> list[tuple[int, int]]:
    return [(int((lo > 0).sum()), int((hi < 0).sum())) for lo, hi in ctx.preact.values()]


# tol = 0.5 is the paper's; with tol > 1 every ratio term is active (a ratio is at most 1),
# so that the gradient of every statistic is exercised
TOLS = [0.5, 1.5]


@pytest.mark.parametrize("tol", TOLS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_reference_on_an_independent_float64_pass(seed, tol):
    net = bn_net(seed).double().train()
    x = torch.rand(8, 2, 8, 8, dtype=torch.float64)
    y = torch.arange(8) % 5
    eps = torch.linspace(0.0, 0.04, 8, dtype=torch.float64)  # mid-ramp, per-sample radii
    fused, ref, ctx = fused_and_reference(net, x, y, eps, independent=True, tol=tol)
    assert all(a > 0 and i > 0 for a, i in layer_counts(ctx))  # every layer has both kinds
    assert fused[0] > 0
    assert_same(fused, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tol", TOLS)
@pytest.mark.parametrize(
    ("name", "shape", "width"),
    [("cnn_small", (1, 28, 28), 4), ("cnn7", (3, 16, 16), 8), ("cnn_tiny", (3, 8, 8), None)],
)
def test_matches_the_reference_on_registered_models_in_float32(name, shape, width, tol):
    torch.manual_seed(0)
    net = build_model(
        name, input_shape=shape, num_classes=10, mean=(0.5,) * shape[0], std=(0.25,) * shape[0], width=width
    )
    ibp_init(net)
    net.train()
    x = torch.rand(16, *shape)
    y = torch.arange(16) % 10
    eps = torch.full((16,), 2 / 255)
    fused, ref, _ = fused_and_reference(net, x, y, eps, independent=False, tol=tol)
    assert_same(fused, ref, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("tol", TOLS)
@pytest.mark.parametrize("case", ["all_active", "all_inactive", "all_unstable"])
def test_layers_without_active_or_inactive_units(case, tol):
    """A layer with no inactive unit (or neither kind) has a non-finite term, which both skip;
    one with no active unit has a finite term (ratio 0) that both keep. No NaN gradients."""
    net = bn_net(3).double().train()
    x = torch.rand(6, 2, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 5
    eps = torch.full((6,), 0.02, dtype=torch.float64)
    with torch.no_grad():
        if case == "all_active":
            net[2].weight.fill_(0.1)
            net[2].bias.fill_(50.0)
        elif case == "all_inactive":
            net[5].weight.fill_(0.1)
            net[5].bias.fill_(-50.0)
        else:
            eps.fill_(1.0)  # boxes of the whole input domain: every unit unstable
    fused, ref, ctx = fused_and_reference(net, x, y, eps, independent=True, tol=tol)
    counts = layer_counts(ctx)
    if case == "all_active":
        assert counts[0][1] == 0 and counts[0][0] > 0
    elif case == "all_inactive":
        assert counts[1][0] == 0 and counts[1][1] > 0
    else:
        assert any(a == 0 and i == 0 for a, i in counts)
    assert torch.isfinite(fused[0])
    assert_same(fused, ref, rtol=1e-9, atol=1e-12)


def test_recording_changes_neither_bounds_nor_their_gradients():
    net = bn_net(4).train()
    x = torch.rand(8, 2, 8, 8)
    y = torch.arange(8) % 5
    eps = torch.full((8,), 0.03)
    params = list(net.parameters())
    out = {}
    for record in (False, True):
        logits, lb, _ = joint_ibp(net, x, y, eps, update_stats=False, record_preact=record)
        out[record] = (logits, lb, torch.autograd.grad(lb.square().sum() + logits.sum(), params))
    torch.testing.assert_close(out[True][:2], out[False][:2], rtol=0, atol=0)
    for g, r in zip(out[True][2], out[False][2], strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


def test_recorded_bounds_and_their_gradients_match_plain_autograd():
    """ctx.preact holds the (lower, upper) bounds of the reference pass, with their gradients
    (CROWN-IBP differentiates through them)."""
    net = bn_net(5).double().train()
    x = torch.rand(6, 2, 8, 8, dtype=torch.float64)
    y = torch.arange(6) % 5
    eps = torch.linspace(0.01, 0.05, 6, dtype=torch.float64)
    params = list(net[:-1].parameters())  # the last layer is after every ReLU
    _, _, ctx = joint_ibp(net, x, y, eps, update_stats=False, record_preact=True)
    _, preact = reference_pass(net, x, y, eps)
    torch.manual_seed(0)
    weights = [(torch.randn_like(lo), torch.randn_like(hi)) for lo, hi in preact]

    def f(bounds):
        return sum((wl * lo).sum() + (wh * hi.relu()).sum() for (lo, hi), (wl, wh) in zip(bounds, weights))

    for (lo, hi), (rlo, rhi) in zip(ctx.preact.values(), preact, strict=True):
        torch.testing.assert_close((lo, hi), (rlo, rhi), rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(f(list(ctx.preact.values())), params)
    ref_grads = torch.autograd.grad(f(preact), params)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_relu_after_flatten_records_out_of_place():
    """A ReLU whose input another node holds (here after Flatten) does not work in place."""
    torch.manual_seed(6)
    net = nn.Sequential(
        Normalize((0.5,), (0.25,)), nn.Conv2d(1, 4, 3), nn.Flatten(), nn.ReLU(), nn.Linear(4 * 4 * 4, 3)
    ).double()
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64)
    y = torch.arange(5) % 3
    eps = torch.full((5,), 0.05, dtype=torch.float64)
    fused, ref, _ = fused_and_reference(net, x, y, eps, independent=True, tol=1.5)
    assert_same(fused, ref, rtol=1e-9, atol=1e-12)


def test_no_recorded_layer_gives_zero_and_hand_made_bounds_are_rejected():
    radius = torch.full((3,), 0.1)
    assert shi_regularizer(BoundContext(), radius).item() == 0.0
    ctx = BoundContext()
    ctx.preact[1] = (torch.zeros(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"layers \[1\]"):
        shi_regularizer(ctx, radius)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compiled_kernels_match_the_reference(monkeypatch):
    """Layers of COMPILE_MIN_NUMEL units and more run torch.compile'd kernels on CPU (here
    every layer): the same values and gradients as the reference, in float32 and float64."""
    monkeypatch.setattr(engine, "COMPILE_MIN_NUMEL", 0)
    net = bn_net(7).train()
    x = torch.rand(8, 2, 8, 8)
    y = torch.arange(8) % 5
    eps = torch.linspace(0.0, 0.04, 8)
    fused, ref, _ = fused_and_reference(net, x, y, eps, independent=False, tol=1.5)
    if engine._FUSED_FORWARD.error or engine._FUSED_BACKWARD.error:
        pytest.skip(
            f"torch.compile unavailable here: {engine._FUSED_FORWARD.error or engine._FUSED_BACKWARD.error}"
        )
    assert engine._FUSED_FORWARD.compiled is not None and engine._FUSED_BACKWARD.compiled is not None
    assert_same(fused, ref, rtol=2e-4, atol=1e-6)
    net = net.double()
    x, eps = x.double(), eps.double()
    assert_same(*fused_and_reference(net, x, y, eps, independent=True, tol=1.5)[:2], rtol=1e-9, atol=1e-12)
    with torch.no_grad():  # the ReLU's output is the eager one's
        _, lb, _ = joint_ibp(net, x, y, eps, update_stats=False, record_preact=True)
        _, ref_lb, _ = joint_ibp(net, x, y, eps, update_stats=False)
    torch.testing.assert_close(lb, ref_lb, rtol=1e-12, atol=1e-12)
