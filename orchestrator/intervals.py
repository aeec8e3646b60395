"""Confidence intervals of the confirm stage: a mean over retrained seeds, and the ratio of two
methods' means.

Mean: Student's t interval, ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample
standard deviation (n - 1 in its denominator); one value has no interval.

Ratio of two methods' means (``a`` over ``b``, each a set of independent retrains): the delta
method, ``R = mean(a) / mean(b)`` with ``Var(R) ~ s_a^2 / (n_a mean(b)^2) + mean(a)^2 s_b^2 /
(n_b mean(b)^4)`` and Student's t at the Welch-Satterthwaite degrees of freedom of those two
terms. Why not a bootstrap: with the few seeds a confirm stage affords (3 to 5), resampling
seeds gives only a handful of distinct means (10 for n = 3) and an interval that is too narrow;
the delta method uses the same t correction as the means and stays defined for n = 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (scipy, a dependency of
    MLflow)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A mean (or ratio) and its confidence interval; ``half`` is None when it has none."""

    mean: float
    half: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> float | None:
        return None if self.half is None else self.mean + self.half

    def text(self, digits: int = 4) -> str:
        """``0.8123 ± 0.0110`` (``0.8123`` without an interval)."""
        if self.half is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def sample_sd(values: Sequence[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Mean and Student-t interval of the finite ``values`` (None if there are none)."""
    xs = _finite(values)
    if not xs:
        return None
    n, mean = len(xs), sum(xs) / len(xs)
    if n < 2:
        return Interval(mean, None, n)
    half = t_quantile(0.5 + level / 2, n - 1) * sample_sd(xs) / math.sqrt(n)
    return Interval(mean, half, n)


def ratio_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval | None:
    """mean(a) / mean(b) with a delta-method interval (module docstring); None when either set is
    empty or mean(b) is not positive. Without two values on each side it has no interval."""
    xs, ys = _finite(a), _finite(b)
    if not xs or not ys:
        return None
    ma, mb = sum(xs) / len(xs), sum(ys) / len(ys)
    if mb <= 0:
        return None
    ratio = ma / mb
    if len(xs) < 2 or len(ys) < 2:
        return Interval(ratio, None, min(len(xs), len(ys)))
    # Var(ma / mb) to first order: s_a^2 / (n_a mb^2) + ma^2 s_b^2 / (n_b mb^4)
    va = sample_sd(xs) ** 2 / (len(xs) * mb**2)
    vb = ma**2 * sample_sd(ys) ** 2 / (len(ys) * mb**4)
    var = va + vb
    if var == 0:
        return Interval(ratio, 0.0, min(len(xs), len(ys)))
    df = var**2 / (va**2 / (len(xs) - 1) + vb**2 / (len(ys) - 1))
    return Interval(ratio, t_quantile(0.5 + level / 2, df) * math.sqrt(var), min(len(xs), len(ys)))
