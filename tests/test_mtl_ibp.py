"""MTL-IBP (trainers.methods.mtl_ibp): its two ends are IBP training and adversarial training,
the attack sees the clean batch's BatchNorm statistics, and gradients reach every weight."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tests.test_models import small_model
from trainers.attacks import margins_of, pgd_attack
from trainers.bounds import clean_pass
from trainers.config import ConfigError, TrainConfig
from trainers.methods import build_method
from trainers.methods.base import robust_ce
from trainers.methods.mtl_ibp import MTLIBPParams, mtl_ibp_loss, with_batch_stats

SHAPE, K = (3, 8, 8), 5


def config(method: str = "mtl-ibp", **kw) -> TrainConfig:
    base = {"epochs": 4, "std_epochs": 1, "ramp_epochs": 2, "max_eps": 0.05, "kappa": 0.0, "reg_weight": 0.0}
    return TrainConfig.from_dict({"dataset": "synthetic", "method": method, **base, **kw})


def data(n: int = 6):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=g), torch.arange(n) % K


def step_grads(cfg: TrainConfig, model, x, y, step: int):
    torch.manual_seed(7)  # the attack's random starts
    out = build_method(cfg, steps_per_epoch=2).step(model, x, y, step)
    model.zero_grad()
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters()]


def test_cross_entropy_is_the_loss_of_the_margins():
    """The identity the method relies on: CE(z, y) = L(z_y - z_j), so L(adversarial margins) is
    adversarial training's loss."""
    logits, y = torch.randn(7, K), torch.arange(7) % K
    torch.testing.assert_close(robust_ce(margins_of(logits, y)), F.cross_entropy(logits, y))


def test_loss_is_the_convex_combination_of_the_two_losses():
    lb, adv = -torch.rand(4, K - 1) * 3, torch.randn(4, K - 1)
    for alpha in (0.0, 0.3, 1.0):
        expected = alpha * robust_ce(lb) + (1 - alpha) * robust_ce(adv)
        torch.testing.assert_close(mtl_ibp_loss(lb, adv, alpha), expected)
    # CC-IBP's loss (margins combined first) is never above it: L is convex in the margins
    assert robust_ce(0.3 * lb + 0.7 * adv) <= mtl_ibp_loss(lb, adv, 0.3)
    assert mtl_ibp_loss(lb, None, 1.0) == robust_ce(lb) and mtl_ibp_loss(None, adv, 0.0) == robust_ce(adv)


@pytest.mark.parametrize("step", [3, 7])  # mid-ramp (regulariser on), after the ramp
def test_alpha_one_is_ibp_training(step):
    kw = {"kappa": 0.25, "reg_weight": 0.5}
    model = small_model("cnn7").train()
    twin = copy.deepcopy(model)
    x, y = data()
    ibp, g_ibp = step_grads(config("ibp", **kw), model, x, y, step)
    mtl, g_mtl = step_grads(config(alpha=1.0, **kw), twin, x, y, step)
    torch.testing.assert_close(mtl.loss, ibp.loss)
    torch.testing.assert_close(mtl.logits, ibp.logits)
    for a, b in zip(g_mtl, g_ibp):
        torch.testing.assert_close(a, b)
    for (k, a), b in zip(twin.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)  # the running statistics moved alike


def test_alpha_zero_is_adversarial_training_on_the_attack_point():
    model = small_model("mlp_tiny").train()  # no BatchNorm: the forward is the model itself
    cfg = config(alpha=0.0, attack_steps=3, attack_restarts=2)
    x, y = data()
    out, _ = step_grads(cfg, model, x, y, 7)
    torch.manual_seed(7)
    eps = torch.full((len(x),), out.eps_max)
    x_adv = pgd_attack(model, x, y, eps, steps=3, restarts=2)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x_adv), y))


def test_attack_radius_follows_the_factor():
    model = small_model("mlp_tiny").train()
    cfg = config(alpha=0.0, attack_eps_factor=2.0)
    x, y = data()
    out, _ = step_grads(cfg, model, x, y, 7)
    torch.manual_seed(7)
    x_adv = pgd_attack(model, x, y, torch.full((len(x),), 2 * out.eps_max), steps=1)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x_adv), y))
    assert float(out.mean_radius) == pytest.approx(out.eps_max)  # the training (IBP) radius


def test_attack_sees_the_clean_batch_statistics():
    model = small_model("cnn7").train()
    x, y = data()
    logits, ctx = clean_pass(model, x)
    torch.testing.assert_close(with_batch_stats(model, ctx, detach=True)(x), logits)
    torch.testing.assert_close(with_batch_stats(model, ctx, detach=False)(x), logits)


def test_running_statistics_move_once_with_the_clean_batch():
    model = small_model("cnn7").train()
    twin = copy.deepcopy(model)
    x, y = data()
    step_grads(config(alpha=0.5, attack_steps=2), model, x, y, 7)
    clean_pass(twin, x, update_stats=True)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.5, 1.0])
@pytest.mark.parametrize("model_name", ["cnn7", "mlp_tiny"])
def test_gradients_flow_to_every_weight(alpha, model_name):
    model = small_model(model_name).train()
    x, y = data()
    out, grads = step_grads(config(alpha=alpha, reg_weight=0.5), model, x, y, 3)
    assert math.isfinite(out.loss.item())
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g, p in zip(grads, model.parameters()) if p.dim() > 1)


@pytest.mark.parametrize(
    "values, match",
    [
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"attack_steps": 0}, "attack_steps=0"),
        ({"attack_restarts": 0}, "attack_restarts=0"),
        ({"attack_step_ratio": 0.0}, "attack_step_ratio=0.0"),
        ({"attack_eps_factor": -1.0}, "attack_eps_factor=-1.0"),
    ],
)
def test_bad_params_name_the_value(values, match):
    with pytest.raises(ConfigError, match=match):
        MTLIBPParams(**values)
    with pytest.raises(ConfigError, match=match):
        config(**values)


def test_params_belong_to_mtl_ibp_only():
    assert config(alpha=0.1).params.alpha == 0.1
    with pytest.raises(ConfigError, match="'alpha' for method 'ibp'"):
        config("ibp", alpha=0.1)
