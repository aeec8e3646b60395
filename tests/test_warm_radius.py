"""ACERT's warm radius solver: per-sample radii carried across epochs (``radius_solver="warm"``).

The warm radii are training targets, not certificates; they must still track the exact
per-batch solve: after one cold (exact) pass, the secant updates from the loss's own pass keep
them within the solver's tolerance on a fixed model, misclassified samples train at radius 0,
a sample certified at a cap that has grown since is solved again (and only such samples), the
drift scale follows radii that grew and returns to 1 on a fixed model, and the state survives a
checkpoint.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainers.bounds.engine import ibp_margins_fn, joint_ibp, other_classes
from trainers.config import TrainConfig
from trainers.data import make_synthetic
from trainers.methods import build_method
from trainers.models import build_model
from trainers.radius import AdaptiveRadius, WarmRadius, adaptive_radii
from trainers.settings import ConfigError
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


def radius_pass(radius, model, x, y, idx, cap):
    """What a training step does with the warm radii, without the loss: the radii at this cap,
    the joint clean + IBP pass at them, the update from that pass."""
    eps = radius(model, x, y, cap, idx=idx)
    logits, lb, ctx = joint_ibp(model, x, y, eps)
    radius.after_bounds(model, x, y, idx, eps, cap, logits, lb, ctx)
    return eps


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
    m = warm_method(warm_drift=0.0)  # the secant alone (the drift scale: its own test)
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
    m = warm_method(warm_flipped="clean")
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
    r, censored = state["method"]["r_est"], state["method"]["censored"]
    assert r.shape[0] > 0 and torch.isfinite(r).sum() > 0 and float(r.nan_to_num(0).max()) > 0
    assert censored.shape == r.shape and censored.dtype == torch.bool
    m = build_method(cfg, steps_per_epoch=1)
    m.load_state_dict(state["method"])
    assert torch.equal(m.radius.r_est.nan_to_num(-1), r.nan_to_num(-1))
    assert torch.equal(m.radius.censored, censored)
    assert m.radius.log_drift == float(state["method"]["log_drift"])


def test_overshoot_trains_above_the_estimate_and_the_bound_brings_it_back():
    """``warm_overshoot`` trains each sample at (1 + it) x its estimate (capped): the estimate,
    updated by the secant from above, stays near the exact radius (the chord of a concave bound
    lands a few % low) instead of running away."""
    model, x, y = trained_mlp()
    exact = adaptive_radii(model, x, y, 0.1, iters=40, rel_tol=1e-6)
    m = warm_method(warm_overshoot=0.5, warm_drift=0.0)
    idx = torch.arange(len(y))
    m.step(model, x, y, 5, idx=idx)
    ok = exact > 0
    for _ in range(3):
        before = m.radius.r_est.clone()
        out = m.step(model, x, y, 5, idx=idx)
        assert abs(float(out.mean_radius) - float((1.5 * before).clamp(max=0.1).mean())) < 1e-6
        rel = (m.radius.r_est[ok] - exact[ok]).abs() / exact[ok]
        assert float(rel.max()) < 0.3 and float(rel.median()) < 0.1, (float(rel.max()), float(rel.median()))
    assert float(out.mean_radius) > float(exact.clamp(max=0.1).mean()) + 0.005  # trained above


def test_overshoot_is_checked():
    with pytest.raises(ConfigError, match="warm_overshoot"):
        warm_method(warm_overshoot=1.5)


def test_slope_mode_estimates_newly_correct_samples_without_a_bound_pass():
    """``warm_new_radius="slope"``: a sample with no estimate (misclassified at its last visit,
    correct now) gets its clean margin over the batch's median bound slope, not a root solve."""
    from bench.common import EvalCounter

    model, x, y = trained_mlp()
    exact = adaptive_radii(model, x, y, 0.1, iters=40, rel_tol=1e-6)
    counter = EvalCounter()
    cfg = TrainConfig.from_dict({"method": "acert", "radius_solver": "warm", "warm_new_radius": "slope",
                                 "epochs": 2, "std_epochs": 0, "ramp_epochs": 0, "max_eps": 0.1, "reg_weight": 0.0})  # fmt: skip
    m = build_method(cfg, steps_per_epoch=1, bound_factory=counter)
    idx = torch.arange(len(y))
    m.step(model, x, y, 5, idx=idx)  # first sight: solved exactly
    calls = counter.calls
    assert calls > 0
    new = (exact > 0) & (torch.arange(len(y)) % 4 == 0)
    m.radius.r_est[new], m.radius.censored[new] = 0.0, False  # as if misclassified at the last visit
    m.step(model, x, y, 5, idx=idx)
    assert counter.calls == calls  # no bound evaluation beyond the loss's pass
    guess = m.radius.r_est[new]
    assert bool((guess > 0).all())
    ratio = guess / exact[new]
    assert 0.2 < float(ratio.median()) < 5, float(ratio.median())  # a start the next secant corrects
    m.step(model, x, y, 5, idx=idx)
    m.step(model, x, y, 5, idx=idx)
    rel = (m.radius.r_est[new] - exact[new]).abs() / exact[new]
    assert float(rel.median()) < 0.05, float(rel.median())


def test_the_exact_solver_is_acerts_default():
    """ACERT as published: every sample's radius root-solved every batch, unless asked for warm."""
    cfg = TrainConfig.from_dict({"method": "acert"})
    assert isinstance(build_method(cfg, steps_per_epoch=1).radius, AdaptiveRadius)
    assert isinstance(warm_method().radius, WarmRadius)


def test_flipped_modes_clean_by_default_or_the_bound_at_the_estimate():
    """``warm_flipped="clean"`` (the default): a sample misclassified now trains on its clean
    margins (radius 0, as the paper); ``bound`` keeps its bound at the estimated radius (no
    clean-pass backward)."""
    model, x, y = trained_mlp(steps=0)  # untrained: many samples misclassified
    idx = torch.arange(len(y))
    out = {}
    for mode in ("clean", "bound", None):
        m = warm_method() if mode is None else warm_method(warm_flipped=mode)
        mode = mode or "clean"  # what the default must behave as
        m.radius.r_est = torch.full((len(y),), 0.05)
        logits, lb, ctx = joint_ibp(model, x, y, torch.full((len(y),), 0.05))
        out[mode] = m.radius.after_bounds(model, x, y, idx, torch.full((len(y),), 0.05), 0.1, logits, lb, ctx)
        wrong = logits.argmax(1) != y
        assert wrong.any()
        if mode == "bound":
            assert out[mode] is lb
        else:
            clean = logits.gather(1, y[:, None]) - logits.gather(1, other_classes(y, logits.shape[1]))
            assert torch.equal(out[mode][wrong], clean[wrong]) and torch.equal(out[mode][~wrong], lb[~wrong])


def recording(sizes: list[int]):
    """A bound factory whose functions record how many samples each evaluation bounds."""

    def factory(*args, **kwargs):
        f = ibp_margins_fn(*args, **kwargs)

        def bound(idx, eps):
            sizes.append(idx.numel())
            return f(idx, eps)

        return bound

    return factory


def test_a_sample_certified_at_a_cap_that_grew_is_solved_again():
    """``warm_at_cap`` (the default): a sample certified at the cap of its last visit has only a
    lower bound of its radius (``censored``); when the cap has grown by its next visit, its
    radius is solved exactly under the current model, for those samples only. Issue #11's rule
    trained it at the new cap whatever its radius: far above it at large max_eps."""
    model, x, y = trained_mlp()
    idx = torch.arange(len(y))
    sizes: list[int] = []
    cfg = TrainConfig.from_dict({"method": "acert", "radius_solver": "warm", "epochs": 2, "std_epochs": 0,
                                 "ramp_epochs": 0, "max_eps": 0.1, "reg_weight": 0.0})  # fmt: skip
    r = build_method(cfg, steps_per_epoch=1, bound_factory=recording(sizes)).radius
    radius_pass(r, model, x, y, idx, 0.02)  # first sight, cap 0.02: solved exactly
    solved = adaptive_radii(model, x, y, 0.02, iters=10, rel_tol=1e-4)  # the policy's settings
    censored = r.censored.clone()
    assert int(censored.sum()) > 10 and torch.equal(censored, solved >= 0.02)
    assert torch.equal(r.r_est[censored], torch.full((int(censored.sum()),), 0.02))
    estimates = r.r_est.clone()
    sizes.clear()
    eps = r(model, x, y, 0.05, idx=idx)  # the next visit, cap 0.05
    exact = adaptive_radii(model, x, y, 0.05, iters=10, rel_tol=1e-4)
    assert sizes and sizes[0] == int(censored.sum()) and max(sizes) <= sizes[0]  # those samples only
    assert torch.allclose(eps[censored], exact[censored], rtol=0, atol=1e-6)
    between = censored & (exact < 0.05 * (1 - 1e-3))  # certified at 0.02, not at 0.05
    assert int(between.sum()) > 0 and bool((eps[between] < 0.05 * (1 - 1e-3)).all())
    assert torch.equal(eps[~censored], estimates[~censored].clamp(max=0.05))  # the others: no solve
    radius_pass(r, model, x, y, idx, 0.05)
    sizes.clear()
    r(model, x, y, 0.05, idx=idx)  # the cap did not grow (after the ramp): nothing to solve
    assert sizes == []
    # without the rule the estimate is the secant's, extrapolated from the smaller cap
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "warm_at_cap": False})
    r = build_method(cfg, steps_per_epoch=1, bound_factory=recording(sizes)).radius
    radius_pass(r, model, x, y, idx, 0.02)
    sizes.clear()
    r(model, x, y, 0.05, idx=idx)
    assert sizes == [] and not bool(r.censored.any())


def test_the_drift_scale_follows_radii_that_grew_and_returns_to_one():
    """``warm_drift``: when the loss's pass finds the samples' radii above the estimates they
    were trained at (radii that grew since the last visit), the next estimates are scaled up;
    once the estimates track a fixed model, the scale decays back to 1. Solved samples are not
    scaled."""
    model, x, y = trained_mlp()
    exact = adaptive_radii(model, x, y, 0.1, iters=40, rel_tol=1e-6)
    idx = torch.arange(len(y))
    m = warm_method()
    m.step(model, x, y, 5, idx=idx)  # first sight: solved exactly
    assert m.radius.log_drift == 0.0  # nothing was trained at an estimate yet
    ok = (exact > 0) & (exact < 0.1 * (1 - 1e-3))
    m.radius.r_est[ok] = exact[ok] / 2  # as if the radii had doubled since the last visit
    m.step(model, x, y, 5, idx=idx)
    grown = m.radius.log_drift
    assert 0.1 * math.log(1.5) < grown <= 0.1 * math.log(2.0) + 1e-6
    eps = m.radius(model, x, y, 0.1, idx=idx)  # the next visit: the estimates, scaled
    assert torch.allclose(eps, (m.radius.r_est * math.exp(grown)).clamp(0.0, 0.1), rtol=1e-6, atol=0)
    for _ in range(8):  # the estimates now track this fixed model: the scale decays
        m.step(model, x, y, 5, idx=idx)
    assert abs(m.radius.log_drift) < grown / 2
    off = warm_method(warm_drift=0.0)
    off.step(model, x, y, 5, idx=idx)
    off.radius.r_est[ok] = exact[ok] / 2
    off.step(model, x, y, 5, idx=idx)
    assert off.radius.log_drift == 0.0
    with pytest.raises(ConfigError, match="warm_drift"):
        warm_method(warm_drift=1.5)
