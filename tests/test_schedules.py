from __future__ import annotations

import pytest

from trainers.schedules import eps_max_at, linear, ramp_progress, reg_weight_at, smooth_ramp


def test_standard_steps_then_ramp_to_max():
    kw = {"std_steps": 10, "ramp_steps": 100, "max_eps": 0.3}
    assert all(eps_max_at(s, **kw) == 0.0 for s in range(10))
    vals = [eps_max_at(s, **kw) for s in range(10, 120)]
    assert vals[0] > 0.0
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    assert eps_max_at(109, **kw) == pytest.approx(0.3) and eps_max_at(500, **kw) == 0.3


def test_smooth_ramp_is_continuous_with_matching_slope_at_the_switch():
    mid, h = 0.25, 1e-6
    assert smooth_ramp(mid - h) == pytest.approx(smooth_ramp(mid + h), abs=1e-5)
    left = (smooth_ramp(mid - h) - smooth_ramp(mid - 2 * h)) / h
    right = (smooth_ramp(mid + 2 * h) - smooth_ramp(mid + h)) / h
    assert left == pytest.approx(right, rel=1e-3)
    assert smooth_ramp(0.1) < 0.1  # slow polynomial start


def test_linear_shape_and_unknown_shape():
    assert eps_max_at(59, std_steps=10, ramp_steps=100, max_eps=1.0, shape="linear") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="'cosine'"):
        eps_max_at(20, std_steps=10, ramp_steps=10, max_eps=1.0, shape="cosine")


def test_ramp_progress_and_reg_weight():
    assert ramp_progress(5, std_steps=10, ramp_steps=10) == 0.0
    assert ramp_progress(14, std_steps=10, ramp_steps=10) == 0.5
    assert reg_weight_at(0.0, 0.4, 0.5) == 0.0
    assert reg_weight_at(0.1, 0.4, 0.5) == pytest.approx(0.375)
    assert reg_weight_at(0.4, 0.4, 0.5) == 0.0
    assert linear(1.0, 0.0, 0.25) == 0.75 and linear(1.0, 0.0, 2.0) == 0.0
