"""The radius root solver: finds roots of known functions and only returns checked radii."""

from __future__ import annotations

import torch

from trainers.rootfind import solve_radius


class Recorder:
    """f(eps) = g(eps) per sample, remembering every (sample, eps, value) it was asked for."""

    def __init__(self, g):
        self.g, self.calls, self.log = g, 0, []

    def __call__(self, idx, eps):
        self.calls += 1
        vals = self.g(idx, eps)
        self.log += list(zip(idx.tolist(), eps.tolist(), vals.tolist()))
        return vals


def checked_positive(rec, i, eps):
    return any(j == i and abs(e - eps) == 0.0 and v > 0 for j, e, v in rec.log)


def test_linear_roots_found_to_relative_tolerance():
    a = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    b = torch.tensor([10.0, 5.0, 50.0, 1.0], dtype=torch.float64)  # roots 0.1, 0.4, 0.01, 3.0 (> cap)
    rec = Recorder(lambda idx, eps: a[idx] - b[idx] * eps)
    r = solve_radius(rec, a, 1.0, rel_tol=1e-3)
    roots = (a / b).clamp(max=1.0)
    assert (r <= roots).all() and (r >= roots * (1 - 1e-3)).all()
    assert r[3] == 1.0  # certified at the cap: one evaluation decides it
    for i in range(3):
        assert checked_positive(rec, i, r[i].item())
    assert rec.calls <= 6  # linear: regula falsi closes the bracket in a few steps


def test_nonlinear_monotone_roots():
    k = torch.linspace(1.0, 400.0, 50, dtype=torch.float64)
    f = Recorder(lambda idx, eps: 1.0 - k[idx] * eps**2 - 0.1 * torch.sin(30 * eps))  # decreasing on [0, 1]
    r = solve_radius(f, torch.ones(50, dtype=torch.float64), 1.0, rel_tol=1e-4, max_iter=100)
    # the true root by dense bisection
    lo, hi = torch.zeros(50, dtype=torch.float64), torch.ones(50, dtype=torch.float64)
    for _ in range(80):
        mid = (lo + hi) / 2
        pos = (1.0 - k * mid**2 - 0.1 * torch.sin(30 * mid)) > 0
        lo, hi = torch.where(pos, mid, lo), torch.where(pos, hi, mid)
    assert (r <= lo + 1e-12).all() and (r >= lo * (1 - 1e-4)).all()


def test_negative_at_zero_gives_zero_and_no_evaluation():
    rec = Recorder(lambda idx, eps: torch.ones_like(eps))
    r = solve_radius(rec, torch.tensor([-1.0, 0.0]), 0.5)
    assert r.tolist() == [0.0, 0.0] and rec.calls == 0


def test_threshold_and_non_monotone_function_still_returns_checked_points():
    # positive, then negative, then positive again: any returned radius must be a checked point
    g = lambda idx, eps: torch.where((eps < 0.3) | (eps > 0.6), 1.0 - eps, -torch.ones_like(eps))  # noqa: E731
    rec = Recorder(g)
    r = solve_radius(rec, torch.ones(3), torch.tensor([0.2, 0.5, 1.0]), rel_tol=1e-3, threshold=0.05)
    assert r[0] == 0.2  # certified at its cap
    for i in range(3):
        assert checked_positive(rec, i, r[i].item()) and g(None, r[i : i + 1]).item() > 0.05


def test_max_iter_bounds_the_work_and_keeps_lower_end():
    rec = Recorder(lambda idx, eps: 0.1 - eps)
    r = solve_radius(rec, torch.tensor([0.1]), 1.0, rel_tol=1e-9, max_iter=3)
    assert rec.calls == 3 and 0.0 <= r.item() <= 0.1
