"""PGD (trainers.attacks) against independent truth: the closed-form worst case of a linear
classifier, and the bound methods, whose margin lower bounds no attack point may undercut."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_models import small_model
from trainers.attacks import adversarial_margins, margins_of, pgd_attack
from trainers.bounds import BOUND_METHODS, margin_lower
from trainers.bounds.engine import input_box
from trainers.models import MODELS

ATOL = 1e-4  # float32 rounding slack between the bound engine and a plain forward pass


def linear_net(d: int, k: int, seed: int = 0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k)).to(dtype)


def linear_worst_objective(net: nn.Sequential, x, y, eps) -> torch.Tensor:
    """max over the clipped box of max_{j != y} z_j - z_y for z = W x + b, in closed form:
    each (w_j - w_y) . x' is largest at the box vertex picking hi where w_j - w_y > 0."""
    lin = net[1]
    lo, hi = (t.flatten(1) for t in input_box(x, eps))
    a = lin.weight[None, :, :] - lin.weight[y][:, None, :]  # [B, K, D]: w_j - w_y
    best = torch.maximum(a * lo[:, None, :], a * hi[:, None, :]).sum(2) + (
        lin.bias[None, :] - lin.bias[y][:, None]
    )
    best[torch.arange(len(y), device=y.device), y] = -torch.inf  # j != y
    return best.max(1).values


def objective(model, x_adv, y):
    return -margins_of(model(x_adv), y).min(1).values


def batch(shape=(1, 4, 4), n=8, k=5, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g, dtype=dtype)
    x[0].fill_(0.0)  # boxes clipped at 0 and at 1
    x[1].fill_(1.0)
    eps = torch.linspace(0.0, 0.3, n, dtype=dtype)  # one radius per sample, eps = 0 included
    return x, torch.arange(n) % k, eps


def test_two_classes_one_step_reaches_the_closed_form_worst_case():
    net = linear_net(16, 2)
    x, y, eps = batch(k=2)
    x_adv = pgd_attack(net, x, y, eps, steps=1)
    torch.testing.assert_close(objective(net, x_adv, y), linear_worst_objective(net, x, y, eps))


def test_many_classes_with_restarts_reach_the_closed_form_worst_case():
    # max_j of linear functions is convex: sign ascent can stop at a vertex that is only locally
    # best, which the restarts are for
    net = linear_net(16, 5)
    x, y, eps = batch()
    g = torch.Generator().manual_seed(0)
    x_adv = pgd_attack(net, x, y, eps, steps=10, restarts=8, generator=g)
    torch.testing.assert_close(objective(net, x_adv, y), linear_worst_objective(net, x, y, eps))


def test_attack_points_stay_in_the_clipped_box():
    net = linear_net(16, 5, dtype=torch.float32)
    x, y, eps = batch(dtype=torch.float32)
    x_adv = pgd_attack(net, x, y, eps, steps=5, restarts=2)
    lo, hi = input_box(x, eps)
    assert ((x_adv >= lo) & (x_adv <= hi)).all()
    assert (x_adv - x).abs().flatten(1).max(1).values.le(eps + 1e-7).all()


def test_eps_zero_gives_the_clean_point():
    model = small_model("cnn_small").eval()
    x, y = torch.rand(5, 3, 8, 8), torch.arange(5)
    eps = torch.zeros(5)
    assert torch.equal(pgd_attack(model, x, y, eps, steps=3, restarts=2), x)
    torch.testing.assert_close(adversarial_margins(model, x, y, eps, steps=3), margins_of(model(x), y))


@pytest.mark.parametrize("bound", BOUND_METHODS.names())
@pytest.mark.parametrize("model_name", MODELS.names())
def test_no_attack_point_undercuts_a_bound_and_attacks_lower_the_margin(model_name, bound):
    """Soundness cross-check: lower bound <= margin at the PGD point < clean margin."""
    torch.manual_seed(0)
    model = small_model(model_name).eval()
    x, y = torch.rand(8, 3, 8, 8), torch.arange(8) % 5
    eps = torch.linspace(0.005, 0.05, 8)
    adv = adversarial_margins(model, x, y, eps, steps=10, restarts=2)
    with torch.no_grad():
        lb = margin_lower(model, x, y, eps, bound)
        clean = margins_of(model(x), y)
    assert adv.shape == lb.shape == (8, 4)
    assert (adv >= lb - ATOL).all(), f"{bound}: attack margin below the bound by {(lb - adv).max():.3g}"
    assert (adv.min(1).values < clean.min(1).values).all()


def test_best_point_over_restarts_is_kept():
    model = small_model("mlp_tiny").eval()
    x, y, eps = torch.rand(16, 3, 8, 8), torch.arange(16) % 5, torch.full((16,), 0.1)
    one = pgd_attack(model, x, y, eps, steps=2, restarts=1, generator=torch.Generator().manual_seed(3))
    many = pgd_attack(model, x, y, eps, steps=2, restarts=5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (objective(model, many, y) >= objective(model, one, y)).all()
    again = pgd_attack(model, x, y, eps, steps=2, restarts=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(many, again)


def test_modes_running_statistics_and_gradients_are_left_alone():
    model = small_model("cnn7").train()
    model[2].eval()  # a mixed mode must come back as it was
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 5
    adversarial_margins(model, x, y, torch.full((6,), 0.05), steps=3, restarts=2)
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps=0"),
        ({"steps": 1, "restarts": 0}, "restarts=0"),
        ({"steps": 1, "step_size": -0.1}, "step_size=-0.1"),
    ],
)
def test_bad_settings_name_the_value(kwargs, match):
    net = linear_net(16, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        pgd_attack(net, torch.rand(2, 16), torch.tensor([0, 1]), torch.full((2,), 0.1), **kwargs)


@pytest.mark.parametrize(
    "eps", [torch.tensor([0.1, -0.1]), torch.tensor([0.1, float("nan")]), torch.full((3,), 0.1)]
)
def test_bad_radii_are_refused(eps):
    net = linear_net(16, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(net, torch.rand(2, 16), torch.tensor([0, 1]), eps, steps=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attack_on_cuda():
    net = linear_net(16, 2).cuda()
    x, y, eps = (t.cuda() for t in batch(k=2))
    x_adv = pgd_attack(net, x, y, eps, steps=1, generator=torch.Generator("cuda").manual_seed(0))
    assert x_adv.is_cuda
    torch.testing.assert_close(objective(net, x_adv, y), linear_worst_objective(net, x, y, eps))
    model = small_model("cnn7").cuda().eval()
    xc, yc, ec = (
        torch.rand(8, 3, 8, 8, device="cuda"),
        torch.arange(8, device="cuda") % 5,
        torch.full((8,), 0.03),
    )
    adv = adversarial_margins(model, xc, yc, ec.cuda(), steps=5, restarts=2)
    with torch.no_grad():
        assert (adv >= margin_lower(model, xc, yc, ec.cuda()) - ATOL).all()
