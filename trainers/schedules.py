"""Schedules as pure functions of the optimisation step (steps, not epochs).

``eps_max_at`` is the radius-growth schedule of certified training: ``std_steps`` of
standard training (eps = 0), then a ramp to ``max_eps`` over ``ramp_steps``. The "smooth"
shape is the one of Shi et al. 2021 (auto_LiRPA's SmoothedScheduler): a polynomial start
``a * p**4`` over the first quarter of the ramp, then linear, with matching slopes at the
switch so that the growth has no kink.
"""

from __future__ import annotations

SMOOTH_MID = 0.25
SMOOTH_POWER = 4.0


def ramp_progress(step: int, *, std_steps: int, ramp_steps: int) -> float:
    """Fraction of the ramp done at ``step`` (0 before and at its start, 1 at and after its end)."""
    if step < std_steps:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, (step - std_steps + 1) / ramp_steps)


def smooth_ramp(p: float, *, mid: float = SMOOTH_MID, power: float = SMOOTH_POWER) -> float:
    """Shi et al. 2021 ramp shape on [0, 1]: polynomial until ``mid``, then linear to 1."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    a = 1.0 / (mid ** (power - 1) * ((1 - mid) * power + mid))
    if p < mid:
        return a * p**power
    v_mid = a * mid**power
    return v_mid + (1 - v_mid) * (p - mid) / (1 - mid)


def eps_max_at(step: int, *, std_steps: int, ramp_steps: int, max_eps: float, shape: str = "smooth") -> float:
    """eps_max(t): 0 during standard training, then the ramp, then ``max_eps``."""
    if step < std_steps:
        return 0.0
    p = ramp_progress(step, std_steps=std_steps, ramp_steps=ramp_steps)
    if shape == "smooth":
        return max_eps * smooth_ramp(p)
    if shape == "linear":
        return max_eps * p
    raise ValueError(f"unknown ramp shape {shape!r}; known: smooth, linear")


def linear(start: float, end: float, progress: float) -> float:
    """Linear interpolation, ``progress`` clipped to [0, 1]."""
    progress = min(1.0, max(0.0, progress))
    return start + (end - start) * progress


def reg_weight_at(eps_max: float, max_eps: float, weight: float) -> float:
    """Weight of the IBP-initialisation regularisers: ``weight * (1 - eps_max / max_eps)``
    during the ramp (Shi et al. 2021), 0 once the ramp is over or before it starts."""
    if eps_max <= 0.0 or eps_max >= max_eps:
        return 0.0
    return weight * (1.0 - eps_max / max_eps)
