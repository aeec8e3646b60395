"""The confirm stage's statistics against known values: Student's t quantiles from printed
tables, a hand-computed sample, and the coverage of the intervals over many simulated samples."""

import math

import numpy as np
import pytest

from orchestrator.intervals import mean_interval, ratio_interval, t_quantile


@pytest.mark.parametrize(
    "df, value",  # two-sided 95 % critical values of Student's t, as printed in standard tables
    [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (1000, 1.962)],
)
def test_t_quantiles_match_the_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


def test_mean_interval_of_a_known_sample():
    iv = mean_interval([1, 2, 3, 4, 5])
    # s = sqrt(2.5) = 1.5811; t_{0.975,4} = 2.7764; half = 2.7764 * 1.5811 / sqrt(5) = 1.9632
    assert iv.mean == 3.0 and iv.n == 5
    assert iv.half == pytest.approx(1.9632, abs=1e-4)
    assert (iv.low, iv.high) == pytest.approx((3 - 1.9632, 3 + 1.9632), abs=1e-4)
    assert iv.text(3) == "3.000 ± 1.963"


def test_one_value_has_no_interval_and_non_finite_values_are_left_out():
    iv = mean_interval([0.8])
    assert iv.mean == 0.8 and iv.half is None and iv.low is None and iv.text(2) == "0.80"
    assert mean_interval([math.nan, 2.0, 4.0, math.inf]).mean == 3.0
    assert mean_interval([]) is None and mean_interval([math.nan]) is None


def test_ratio_interval_by_hand():
    # b has no spread: Var = s_a^2 / (n_a mb^2) = 2 / 2 = 1, Welch df = 1 -> half = t_{0.975,1}
    iv = ratio_interval([2.0, 4.0], [1.0, 1.0, 1.0])
    assert iv.mean == 3.0 and iv.half == pytest.approx(12.7062, abs=1e-4)
    # both vary: a = [1, 3] (mean 2, s^2 2), b = [3, 5] (mean 4, s^2 2):
    # Var = 2 / (2 * 16) + 4 * 2 / (2 * 256) = 0.0625 + 0.015625; df = Var^2 / (0.0625^2 + 0.015625^2)
    var = 0.0625 + 0.015625
    df = var**2 / (0.0625**2 + 0.015625**2)
    iv = ratio_interval([1.0, 3.0], [3.0, 5.0])
    assert iv.mean == 0.5 and iv.half == pytest.approx(t_quantile(0.975, df) * math.sqrt(var), rel=1e-12)
    assert 1.0 < df < 2.0


def test_ratio_without_interval_or_undefined():
    assert ratio_interval([2.0], [1.0, 1.0]).half is None
    assert ratio_interval([1.0, 2.0], [0.0, 0.0]) is None  # no ratio to a zero mean
    assert ratio_interval([], [1.0]) is None
    assert ratio_interval([1.0, 1.0], [2.0, 2.0]).half == 0.0


def coverage(make_interval, truth, draw, runs=4000):
    hits = 0
    for _ in range(runs):
        iv = make_interval(*draw())
        hits += iv.low <= truth <= iv.high
    return hits / runs


def test_intervals_cover_the_truth_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    mean_cov = coverage(mean_interval, 0.8, lambda: (rng.normal(0.8, 0.02, size=3),))
    # a binomial proportion over 4000 runs: its standard error is 0.0034
    assert 0.935 <= mean_cov <= 0.965
    # ratio of means with the spread of retrained seeds (a few % of the mean): near nominal
    ratio_cov = coverage(
        ratio_interval, 0.12 / 0.10, lambda: (rng.normal(0.12, 0.006, 3), rng.normal(0.10, 0.005, 4))
    )
    assert 0.93 <= ratio_cov <= 0.97
