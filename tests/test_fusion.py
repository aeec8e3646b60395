"""CROWN-IBP with loss fusion (``trainers.bounds.fusion``): a sound per-sample upper bound of
the cross-entropy over the eps-box, and its exact relations to the existing bounds.

Soundness is checked as in tests/test_bounds.py, in float32, with BatchNorm (train mode with
the clean batch's statistics, and eval mode), padded and strided convolutions: the bound lies
above the cross-entropy at sampled points of the clipped box (half of them corners), at PGD
points maximising the margin loss and at PGD points maximising the cross-entropy itself
(``trainers.attacks.pgd_attack``), for radii from 0 up and samples at the [0, 1] edges.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_bounds import ATOL, conv_net, frozen_bn_copy, mlp, sample_box
from trainers.attacks import pgd_attack
from trainers.bounds import clean_pass, crown_ibp_margins, ibp_margins, joint_ibp
from trainers.bounds.fusion import crown_ibp_ce_upper
from trainers.methods.base import robust_ce
from trainers.models import Normalize

BETAS = [0.0, 0.5, 1.0]


def ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="none")


def ce_as_margin_loss(model: nn.Module, y: torch.Tensor):
    """Logits whose margin loss max_{j != y} z_j - z_y is the cross-entropy: PGD on them (the
    attack's objective) maximises the cross-entropy."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y, reduction="none")
        onehot = F.one_hot(y, model[-1].out_features).to(loss.dtype)
        return -onehot * loss[:, None]

    return forward


def edge_batch(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    x = torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))
    x[0] = 0.0  # corners of the domain: clipping matters
    x[1] = 1.0
    x[2, :, :2] = 0.0
    x[2, :, -2:] = 1.0
    return x


def check_ce_sound(model, x, y, eps, beta, ctx=None, n_samples=48):
    with torch.no_grad():
        ub = crown_ibp_ce_upper(model, x, y, eps, ctx, beta=beta)
    assert ub.shape == (x.shape[0],) and ub.dtype == torch.float32 and torch.isfinite(ub).all()
    truth = model if ctx is None else frozen_bn_copy(model, ctx)
    with torch.no_grad():
        for p in sample_box(x, eps, n_samples):
            assert (ce(truth, p, y) <= ub + ATOL).all(), f"beta={beta}: sampled point above the bound"
    gen = torch.Generator().manual_seed(7)
    for forward in (truth, ce_as_margin_loss(truth, y)):
        adv = pgd_attack(truth, x, y, eps, steps=40, restarts=2, generator=gen, forward=forward)
        with torch.no_grad():
            gap = ub - ce(truth, adv, y)
        assert (gap >= -ATOL).all(), f"beta={beta}: PGD point above the bound by {-gap.min():.3g}"
    return ub


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", [0, 1])
def test_conv_bn_train_mode_sound_with_clean_batch_statistics(beta, seed):
    net = conv_net(seed=seed).train()
    x = edge_batch(8, (2, 8, 8), seed)
    y = torch.arange(8) % 5
    eps = torch.tensor([0.0, 0.02, 0.3, 0.001, 0.01, 0.03, 0.06, 0.1])
    with torch.no_grad():
        _, ctx = clean_pass(net, x)
    check_ce_sound(net, x, y, eps, beta, ctx)


@pytest.mark.parametrize("beta", BETAS)
def test_conv_bn_eval_mode_sound(beta):
    net = conv_net(seed=2).eval()
    x = edge_batch(6, (2, 8, 8), 2)
    y = torch.tensor([4, 0, 1, 2, 3, 4])
    eps = torch.tensor([0.0, 0.05, 0.2, 0.005, 0.02, 0.1])
    check_ce_sound(net, x, y, eps, beta)


@pytest.mark.parametrize("beta", BETAS)
def test_mlp_sound_many_radii(beta):
    net = mlp(seed=4)
    x = edge_batch(12, (1, 3, 4), 4)
    y = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(5))
    check_ce_sound(net, x, y, torch.logspace(-4, 0, 12), beta)


def test_beta_zero_is_robust_ce_of_the_ibp_margins():
    """log(1 + sum_{j != y} exp(-lb_j)) is both: the fused IBP part and robust_ce's per-sample
    cross-entropy of the worst-case logits (0, -lb) with label 0."""
    net = conv_net(seed=5).train()
    x, y = edge_batch(8, (2, 8, 8), 5), torch.arange(8) % 5
    eps = torch.linspace(0.0, 0.1, 8)
    with torch.no_grad():
        _, lb, ctx = joint_ibp(net, x, y, eps, update_stats=False, record_preact=True)
        want = torch.stack([robust_ce(lb[i : i + 1]) for i in range(8)])
        given = crown_ibp_ce_upper(net, x, y, eps, ctx, beta=0.0, ibp_lb=lb)
        own = crown_ibp_ce_upper(net, x, y, eps, ctx, beta=0.0)  # u_j from its own interval
    torch.testing.assert_close(given, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(own, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", BETAS)
def test_zero_radius_gives_the_clean_cross_entropy(beta):
    """A point box: every interval is a point, each chord passes through exp(m_j)."""
    net = conv_net(seed=6).train()
    x, y = edge_batch(6, (2, 8, 8), 6), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        logits, ctx = clean_pass(net, x)
        ub = crown_ibp_ce_upper(net, x, y, torch.zeros(6), ctx, beta=beta)
    torch.testing.assert_close(ub, F.cross_entropy(logits, y, reduction="none"), rtol=1e-5, atol=1e-5)


def two_class_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        Normalize((0.4, 0.4), (0.3, 0.3)),
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 2),
    )
    return net.double().train()


def test_two_classes_crown_part_is_the_chord_at_the_crown_ibp_margin():
    """K = 2: the fused row is k (W_y - W_j), today's CROWN-IBP row times k > 0, so the same
    ReLU slopes are chosen and S_crown = e^l + k (u_c - l), u_c = -crown_ibp_margins, [l, u] the
    IBP interval of z_j - z_y: CE <= log(1 + e^l + (e^u - e^l) / (u - l) (u_c - l))."""
    net = two_class_net(8)
    x = torch.rand((6, 2, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    eps = torch.tensor([0.01, 0.02, 0.03, 0.05, 0.08, 0.1], dtype=torch.float64)
    with torch.no_grad():
        _, ctx = clean_pass(net, x)
        fused = crown_ibp_ce_upper(net, x, y, eps, ctx, beta=1.0)
        u = -ibp_margins(net, x, y, eps, ctx)[:, 0]
        low = ibp_margins(net, x, 1 - y, eps, ctx)[:, 0]  # z_j - z_y >= its margin with label j
        u_c = -crown_ibp_margins(net, x, y, eps, ctx)[:, 0]
    assert (u - low > 1e-3).all()  # the chord formula below, not its point limit
    chord = low.exp() + (u.exp() - low.exp()) / (u - low) * (u_c - low)
    torch.testing.assert_close(fused, torch.log1p(chord), rtol=1e-10, atol=1e-10)


def test_gradients_flow_through_the_training_pass():
    """As a training loss: the IBP pass of the step (recorded bounds) then the fused bound."""
    net = conv_net(seed=9).train()
    x, y = edge_batch(8, (2, 8, 8), 9), torch.arange(8) % 5
    eps = torch.full((8,), 0.03)
    _, lb, ctx = joint_ibp(net, x, y, eps, update_stats=False, record_preact=True)
    loss = crown_ibp_ce_upper(net, x, y, eps, ctx, beta=0.5, ibp_lb=lb).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net[1].weight.grad.abs().sum() > 0


def test_recorded_bounds_and_a_fresh_ibp_pass_agree():
    net = conv_net(seed=10).train()
    x, y = edge_batch(6, (2, 8, 8), 10), torch.arange(6) % 5
    eps = torch.linspace(0.0, 0.06, 6)
    with torch.no_grad():
        _, ctx = clean_pass(net, x)
        fresh = crown_ibp_ce_upper(net, x, y, eps, ctx, beta=1.0)  # runs (and records) IBP
        recorded = crown_ibp_ce_upper(net, x, y, eps, ctx, beta=1.0)  # reuses ctx.preact
    torch.testing.assert_close(recorded, fresh, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_bad_beta_is_rejected(beta):
    net = mlp()
    with pytest.raises(ValueError, match="beta="):
        crown_ibp_ce_upper(net, torch.rand(2, 1, 3, 4), torch.tensor([0, 1]), torch.zeros(2), beta=beta)


@pytest.mark.parametrize("compiled", [False, True])
def test_one_row_relu_step_matches_the_composed_step(compiled, monkeypatch):
    """The hand-written single-row ReLU step (loss fusion's), eager and compiled (as on large
    CPU tensors), gives the values and gradients of ``_back_relu``'s autograd ops, on stable
    and unstable neurons and both signs of A."""
    from trainers.bounds import crown
    from trainers.bounds.crown import _back_relu, _OneRowReLU

    monkeypatch.setattr(crown, "ONE_ROW_COMPILE_MIN_NUMEL", 1 if compiled else None)
    dtype = torch.float32 if compiled else torch.float64
    gen = torch.Generator().manual_seed(11)
    lo = torch.randn(5, 3, 4, 4, generator=gen).to(dtype)
    hi = lo + torch.rand(5, 3, 4, 4, generator=gen).to(dtype) * 2
    a = torch.randn(5, 1, 3, 4, 4, generator=gen).to(dtype)
    assert ((lo < 0) & (hi > 0)).any() and (lo > 0).any() and (hi < 0).any()
    up_a, up_e = torch.randn_like(a), torch.randn(5, 1, dtype=dtype)
    grads = []
    for step in (_back_relu, _OneRowReLU.apply):
        ins = [t.clone().requires_grad_(True) for t in (a, lo, hi)]
        new_a, extra = step(*ins)
        grads.append((new_a, extra, *torch.autograd.grad((new_a * up_a).sum() + (extra * up_e).sum(), ins)))
    tol = 1e-5 if compiled else 1e-12
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _crown_ibp_step(model, x, y, step: int, **params):
    from tests.test_mtl_ibp import config
    from trainers.methods import build_method

    cfg = config("crown-ibp", kappa=0.25, reg_weight=0.5, **params)
    return build_method(cfg, steps_per_epoch=2).step(model, x, y, step)


def test_the_crown_ibp_method_trains_on_the_fused_bound_by_default():
    """crown-ibp's robust loss is the mean fused bound (beta of its schedule), kappa-mixed and
    regularised as every method: after the ramp (beta = 0) it is the robust CE of the IBP
    margins, the same loss as with ``--no-loss-fusion``; mid-ramp (beta = 0.75) the two forms
    differ and the fused one trains every weight."""
    import copy

    net = conv_net(c=3, k=5).train()  # BatchNorm in train mode, padded and strided convolutions
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.arange(6) % 5
    after = [_crown_ibp_step(copy.deepcopy(net), x, y, 7, loss_fusion=f).loss for f in (True, False)]
    torch.testing.assert_close(after[0], after[1], rtol=1e-6, atol=0)
    fused_net = copy.deepcopy(net)
    fused = _crown_ibp_step(fused_net, x, y, 3, loss_fusion=True)
    margins = _crown_ibp_step(copy.deepcopy(net), x, y, 3, loss_fusion=False)
    assert torch.isfinite(fused.loss) and not torch.allclose(fused.loss, margins.loss)
    fused.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fused_net.parameters())
