"""The frontier mathematics against hand-worked cases and a brute-force reference."""

import math
import random

import pytest

from orchestrator.pareto import (
    TrialPoint,
    dominates,
    pareto_front,
    penalised_score,
    satisfied_targets,
    select_winner,
)


def brute_front(points):
    ok = [i for i, p in enumerate(points) if all(math.isfinite(v) for v in p)]
    return sorted(
        (i for i in ok if not any(dominates(points[j], points[i]) for j in ok)),
        key=lambda i: (points[i][0], i),
    )


def test_dominated_points_are_dropped_and_front_sorted_by_accuracy():
    pts = [(0.9, 0.1), (0.8, 0.2), (0.85, 0.1), (0.7, 0.05), (0.95, 0.01)]
    assert pareto_front(pts) == [1, 0, 4]


def test_ties():
    # exact duplicates both stay; equal accuracy keeps only the larger ACR; equal ACR the larger accuracy
    pts = [(0.8, 0.2), (0.8, 0.2), (0.8, 0.1), (0.7, 0.2)]
    assert pareto_front(pts) == [0, 1]


def test_non_finite_points_are_ignored():
    pts = [(math.nan, 1.0), (0.5, math.inf), (0.5, 0.1), (0.4, -math.inf)]
    assert pareto_front(pts) == [2]
    assert pareto_front([]) == []


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    # a coarse grid makes ties and duplicates frequent
    pts = [(rng.randint(0, 6) / 6, rng.randint(0, 6) / 6) for _ in range(rng.randint(1, 30))]
    assert pareto_front(pts) == brute_front(pts)


def test_winner_is_the_feasible_trial_of_largest_acr():
    trials = [
        TrialPoint("a", 0.95, 0.30),
        TrialPoint("b", 0.80, 0.50),
        TrialPoint("c", 0.90, 0.40),
        TrialPoint("d", 0.99, 0.90, failed=True),
        TrialPoint("e", math.nan, 5.0),
    ]
    assert select_winner(trials, 0.85).trial_id == "c"
    assert select_winner(trials, 0.80).trial_id == "b"  # accuracy == target is feasible
    assert select_winner(trials, 0.95).trial_id == "a"


def test_infeasible_target_has_no_winner():
    assert select_winner([TrialPoint("a", 0.6, 0.3)], 0.7) is None
    assert select_winner([], 0.5) is None


def test_winner_ties_break_on_accuracy_then_trial_id():
    trials = [TrialPoint("z", 0.9, 0.4), TrialPoint("y", 0.95, 0.4), TrialPoint("x", 0.95, 0.4)]
    assert select_winner(trials, 0.9).trial_id == "x"


def test_only_a_trial_that_trained_its_full_budget_wins():
    """A trial stopped early (epoch < its budget), or one whose epoch is unknown, never wins, even
    with the best ACR; the full-budget one does, and is also what is left when it is alone."""
    stopped = TrialPoint("a", 0.95, 0.90, epoch=2, budget=8)
    unknown = TrialPoint("b", 0.95, 0.80, budget=8)
    full = TrialPoint("c", 0.91, 0.30, epoch=8, budget=8)
    assert not stopped.full_budget and not unknown.full_budget and full.full_budget
    assert stopped.usable  # still drawn on the plot
    assert select_winner([stopped, unknown, full], 0.9).trial_id == "c"
    assert select_winner([stopped, unknown], 0.9) is None
    assert select_winner([stopped, full], 0.93) is None  # the stopped one was the only feasible


def test_satisfied_targets_and_penalised_score():
    assert satisfied_targets(0.75, [0.6, 0.7, 0.8]) == [0.6, 0.7]
    assert satisfied_targets(math.nan, [0.6]) == []
    assert penalised_score(0.05, 0.8, target=0.7, ref_eps=0.1, penalty=10) == pytest.approx(0.5)
    assert penalised_score(0.05, 0.6, target=0.7, ref_eps=0.1, penalty=10) == pytest.approx(0.5 - 1.0)
    assert penalised_score(math.nan, 0.6, target=0.7, ref_eps=0.1, penalty=10) == -math.inf
    # a feasible trial always outranks an infeasible one of equal ACR
    assert penalised_score(0.05, 0.71, target=0.7, ref_eps=0.1, penalty=10) > penalised_score(
        0.05, 0.69, target=0.7, ref_eps=0.1, penalty=10
    )
