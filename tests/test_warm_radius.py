"""ACERT's warm radius solver: per-sample radii carried across epochs (``radius_solver="warm"``).

The warm radii are training targets, not certificates; they must still track the exact
per-batch solve: after one cold (exact) pass, the secant updates from the loss's own pass keep
them within the solver's tolerance on a fixed model, misclassified samples train at radius 0,
and the state survives a checkpoint.
"""

from __future__ import annotations

import torch

from trainers.config import TrainConfig
from trainers.data import make_synthetic
from trainers.methods import build_method
from trainers.methods.acert import WarmRadius, adaptive_radii
from trainers.models import build_model
from trainers.train import run_training


def trained_mlp(steps: int = 50):
    torch.manual_seed(0)
    x, y, _, _ = make_synthetic(256, 4)
    model = build_model("mlp_tiny", input_shape=(1, 8, 8), num_classes=4, mean=(0.5,), std=(0.5,))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def warm_method(max_eps: float = 0.1, **params):
    values = {"method": "acert", "radius_solver": "warm", "epochs": 2, "std_epochs": 0, "ramp_epochs": 0,
              "max_eps": max_eps, "reg_weight": 0.0, **params}  # fmt: skip
    return build_method(TrainConfig.from_dict(values), steps_per_epoch=1)


def test_warm_radii_track_the_exact_solve_on_a_fixed_model():
    model, x, y = trained_mlp()
    exact = adaptive_radii(model, x, y, 0.1, iters=40, rel_tol=1e-6)
    m = warm_method()
    assert isinstance(m.radius, WarmRadius)
    idx = torch.arange(len(y))
    first = m.step(model, x, y, 5, idx=idx)  # first sight: the exact solve, before the step
    assert abs(float(first.mean_radius) - float(exact.clamp(max=0.1).mean())) < 1e-3
    for _ in range(3):
        out = m.step(model, x, y, 5, idx=idx)
        r = m.radius.r_est
        ok = exact > 0
        rel = (r[ok] - exact[ok]).abs() / exact[ok]
        assert float(rel.max()) < 1e-2, float(rel.max())
        assert torch.equal(r[~ok], torch.zeros_like(r[~ok]))  # misclassified: radius 0
        assert abs(float(out.mean_radius) - float(exact.clamp(max=0.1).mean())) < 1e-3


def test_a_shrinking_radius_is_found_from_the_loss_pass():
    """An estimate above the true radius is brought down by the secant of the next pass."""
    model, x, y = trained_mlp()
    exact = adaptive_radii(model, x, y, 0.1, iters=40, rel_tol=1e-6)
    m = warm_method()
    idx = torch.arange(len(y))
    m.step(model, x, y, 5, idx=idx)
    m.radius.r_est = torch.where(exact > 0, (exact * 1.4).clamp(max=0.1), exact)  # 40 % too large
    ok = exact > 0
    before = (m.radius.r_est[ok] - exact[ok]).abs() / exact[ok]
    for _ in range(4):
        m.step(model, x, y, 5, idx=idx)
    rel = (m.radius.r_est[ok] - exact[ok]).abs() / exact[ok]
    # regula falsi from one side: most samples land at once, a few take a few more passes
    assert float(before.max()) > 0.3 and float(rel.max()) < 0.1 and float(rel.median()) < 1e-3


def test_misclassified_samples_train_on_their_clean_margins():
    model, x, y = trained_mlp(steps=0)  # untrained: many samples misclassified
    m = warm_method()
    idx = torch.arange(len(y))
    m.radius.r_est = torch.full((len(y),), 0.05)  # pretend every sample had a radius
    out = m.step(model, x, y, 5, idx=idx)
    wrong = model(x).argmax(1) != y
    assert wrong.any() and torch.isfinite(out.loss)
    assert torch.equal(m.radius.r_est[wrong], torch.zeros(int(wrong.sum())))


def test_warm_state_is_in_the_checkpoint_and_comes_back(tmp_path):
    cfg = TrainConfig.from_dict({"dataset": "synthetic", "synthetic_size": 256, "method": "acert", "epochs": 3,
                                 "std_epochs": 1, "ramp_epochs": 1, "radius_solver": "warm", "val_acr_samples": 32, "lr": 0.01,
                                 "device": "cpu", "eval_test_at_end": False})  # fmt: skip
    final = run_training(cfg, output_dir=tmp_path, log=lambda s: None)
    assert final["mean_radius"] > 0
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    r = state["method"]["r_est"]
    assert r.shape[0] > 0 and torch.isfinite(r).sum() > 0 and float(r.nan_to_num(0).max()) > 0
    m = build_method(cfg, steps_per_epoch=1)
    m.load_state_dict(state["method"])
    assert torch.equal(m.radius.r_est.nan_to_num(-1), r.nan_to_num(-1))
