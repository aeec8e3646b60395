"""SABR (trainers.methods.sabr): lambda = 1 is IBP training, the small box never leaves the
eps-box nor [0, 1], and a SABR-trained model is certified by the same sound bounds as any other."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.test_bounds import ATOL, pgd_min_margin, sample_box, true_margins
from tests.test_models import small_model
from tests.test_mtl_ibp import config as mtl_ibp_config
from trainers.bounds.engine import input_box
from trainers.certify import certified_radii
from trainers.config import ConfigError, TrainConfig
from trainers.methods import build_method
from trainers.methods.sabr import SABRParams, small_box
from trainers.train import build_optimizer, train_step

SHAPE, K = (3, 8, 8), 5


def config(method: str = "sabr", **kw) -> TrainConfig:
    return mtl_ibp_config(method, **kw)  # the same short schedule as MTL-IBP's tests


def data(n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, *SHAPE, generator=g)
    x[0], x[1, 0] = 0.0, 1.0  # pixels on the edges of the input domain
    return x, torch.arange(n) % K


def step_grads(cfg: TrainConfig, model, x, y, step: int):
    torch.manual_seed(7)  # the attack's random starts
    out = build_method(cfg, steps_per_epoch=2).step(model, x, y, step)
    model.zero_grad()
    out.loss.backward()
    return out, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("step", [3, 7])  # mid-ramp (regulariser on), after the ramp
def test_lambda_one_is_ibp_training(step, dtype):
    """The same loss bit for bit (the small box is the eps-box); logits and gradients agree up
    to rounding: SABR's clean pass and box pass sum in another order than IBP's joint pass
    (gradients checked tightly in float64, where that rounding is small)."""
    kw = {"kappa": 0.25, "reg_weight": 0.5}
    torch.manual_seed(0)
    model = small_model("cnn7").train().to(dtype)  # BatchNorm in train mode
    twin = copy.deepcopy(model)
    x, y = data()
    x = x.to(dtype)
    ibp, g_ibp = step_grads(config("ibp", **kw), model, x, y, step)
    sabr, g_sabr = step_grads(config(sabr_lambda=1.0, **kw), twin, x, y, step)
    assert torch.equal(sabr.loss, ibp.loss)
    torch.testing.assert_close(sabr.logits, ibp.logits)
    if dtype == torch.float64:
        for a, b in zip(g_sabr, g_ibp):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    for (k, a), b in zip(twin.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)  # the running statistics moved alike, once


def test_a_small_lambda_is_not_ibp():
    torch.manual_seed(0)
    model = small_model("cnn7").train()
    x, y = data()
    ibp, _ = step_grads(config("ibp"), copy.deepcopy(model), x, y, 7)
    sabr, _ = step_grads(config(sabr_lambda=0.1), model, x, y, 7)
    assert sabr.loss < ibp.loss  # IBP over a box inside the eps-box is tighter on this net


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.1, 0.3, 0.7])
@pytest.mark.parametrize("lam", [0.01, 0.1, 0.4, 0.7, 0.99, 1.0])
def test_the_small_box_lies_inside_the_eps_box_and_the_input_domain(lam, eps):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 2, 4, 4, generator=g)
    x[:8], x[8:16] = 0.0, 1.0  # samples on the domain's edges
    x[16:24, :, :2] = 0.0
    x[24:32, :, :2] = 1.0
    e = torch.rand(64, generator=g) * eps
    lo_e, hi_e = input_box(x, e)
    x_adv = lo_e + torch.rand(x.shape, generator=g) * (hi_e - lo_e)  # anywhere in the eps-box
    x_adv[32:40] = torch.where(
        torch.rand(8, 2, 4, 4, generator=g) < 0.5, lo_e[32:40], hi_e[32:40]
    )  # vertices
    lo, hi = small_box(x, x_adv, e, lam)
    assert (lo_e <= lo).all() and (lo <= hi).all() and (hi <= hi_e).all()
    assert (0 <= lo).all() and (hi <= 1).all()
    assert (lo - 1e-6 <= x_adv).all() and (x_adv <= hi + 1e-6).all()  # around the attack point
    # as wide as it fits: 2 lam eps, or the whole clipped eps-box where that is narrower
    want = torch.minimum(2 * lam * e.view(-1, 1, 1, 1), hi_e - lo_e)
    torch.testing.assert_close(hi - lo, want.expand_as(hi), atol=1e-6, rtol=0)


def test_lambda_one_box_is_the_eps_box_bit_for_bit():
    x, _ = data(16)
    e = torch.rand(16, generator=torch.Generator().manual_seed(5)) * 0.3
    lo_e, hi_e = input_box(x, e)
    lo, hi = small_box(x, torch.rand_like(x).clamp(lo_e, hi_e), e, 1.0)
    assert torch.equal(lo, lo_e) and torch.equal(hi, hi_e)


@pytest.mark.parametrize("model_name", ["cnn7", "mlp_tiny"])
def test_gradients_flow_to_every_weight(model_name):
    model = small_model(model_name).train()
    x, y = data()
    out, grads = step_grads(config(kappa=0.3, reg_weight=0.5, attack_steps=2), model, x, y, 3)
    assert math.isfinite(out.loss.item()) and float(out.mean_radius) == pytest.approx(out.eps_max)
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g, p in zip(grads, model.parameters()) if p.dim() > 1)


def test_certificates_of_a_sabr_trained_model_are_sound():
    """Certification reads the model only: a model trained on small boxes (margins that bound
    nothing over the eps-box) is certified by the same IBP radii, and no point below a
    certified radius, sampled or attacked, is misclassified."""
    torch.manual_seed(0)
    model = small_model("cnn_small").train()
    x, y = data(32)
    cfg = config(sabr_lambda=0.2, attack_steps=2, max_eps=0.1, std_epochs=0, ramp_epochs=1, epochs=2, lr=5e-3)
    method = build_method(cfg, steps_per_epoch=10)
    opt, sched = build_optimizer(model, cfg, 20)
    for step in range(20):
        train_step(model, method, opt, sched, x, y, step, grad_clip=cfg.grad_clip)
    radii, preds = certified_radii(model, x, y, eps_cap=0.1)
    ok = radii > 0
    assert ok.any() and (preds[ok] == y[ok]).all()
    model.eval()
    r = radii[ok] * (1 - 1e-3)
    xs, ys = x[ok], y[ok]
    with torch.no_grad():
        for p in sample_box(xs, r, 32):
            assert (true_margins(model, p, ys).min(1).values > -ATOL).all()
    adv = pgd_min_margin(model, xs, ys, r)
    with torch.no_grad():
        assert (true_margins(model, adv, ys).min(1).values > -ATOL).all()


@pytest.mark.parametrize(
    "values, match",
    [
        ({"sabr_lambda": 0.0}, "sabr_lambda=0.0"),
        ({"sabr_lambda": 1.5}, "sabr_lambda=1.5"),
        ({"attack_steps": 0}, "attack_steps=0"),
        ({"attack_restarts": 0}, "attack_restarts=0"),
        ({"attack_step_ratio": 0.0}, "attack_step_ratio=0.0"),
    ],
)
def test_bad_params_name_the_value(values, match):
    with pytest.raises(ConfigError, match=match):
        SABRParams(**values)
    with pytest.raises(ConfigError, match=match):
        config(**values)
    with pytest.raises(ConfigError, match="'sabr_lambda' for method 'ibp'"):
        config("ibp", sabr_lambda=0.5)
