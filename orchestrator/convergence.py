"""Convergence of a search, as pure functions: what the parent run's step metrics say.

After each finished trial of a method, the sweep logs on its parent run (step = the number of
that method's trials finished so far):

- ``best_val_acr/<method>/<target>``: the best validation ACR of a feasible trial so far, the
  winner :func:`orchestrator.pareto.select_winner` would pick now (logged once one exists);
- ``hypervolume/<method>``: the area of the (val_acc, val_acr) plane that the trials so far
  dominate, above the reference point (the lowest target's accuracy, ACR 0).

Both count only the trials that may win (:attr:`TrialPoint.eligible`: finite figures, full
epoch budget). A trial the scheduler stopped early is left out of the hypervolume too: its
figures come from a shorter training, and a front no winner can be picked from would overstate
what the search has found. With that rule the two metrics agree: the hypervolume is the integral,
over accuracies from the lowest target up, of the best feasible ACR at that accuracy, so a
best-so-far that rises for any target raises it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.pareto import TrialPoint, select_winner

BEST = "best_val_acr"
HYPERVOLUME = "hypervolume"


def best_key(method: str, target: float) -> str:
    """``best_val_acr/acert/0.8``."""
    return f"{BEST}/{method}/{target:g}"


def hypervolume_key(method: str) -> str:
    """``hypervolume/acert``."""
    return f"{HYPERVOLUME}/{method}"


def hypervolume_2d(points: Iterable[tuple[float, float]], ref: tuple[float, float]) -> float:
    """The area dominated by ``points`` (both coordinates maximised) and bounded below by ``ref``.

    Sorted by the first coordinate, descending, the height of the dominated region between one
    point's x and the next is the largest y seen so far; points that do not exceed ``ref`` in
    both coordinates, or are not finite, add nothing.
    """
    rx, ry = ref
    kept = sorted(
        ((x, y) for x, y in points if math.isfinite(x) and math.isfinite(y) and x > rx and y > ry),
        reverse=True,
    )
    area, height = 0.0, ry
    for i, (x, y) in enumerate(kept):
        height = max(height, y)
        nxt = kept[i + 1][0] if i + 1 < len(kept) else rx
        area += (x - nxt) * (height - ry)
    return area


def reference(targets: Sequence[float]) -> tuple[float, float]:
    """The hypervolume's reference point: the lowest target's accuracy and ACR 0."""
    return (min(targets), 0.0)


def method_hypervolume(points: Sequence[TrialPoint], targets: Sequence[float]) -> float:
    """The hypervolume of the eligible points' validation front."""
    return hypervolume_2d(((p.val_acc, p.val_acr) for p in points if p.eligible), reference(targets))


def convergence_metrics(
    method: str, points: Sequence[TrialPoint], targets: Sequence[float]
) -> dict[str, float]:
    """The parent run's metrics after ``points`` (a method's finished trials) have ended."""
    out = {}
    for a in targets:
        w = select_winner(points, a)
        if w is not None:
            out[best_key(method, a)] = float(w.val_acr)
    out[hypervolume_key(method)] = method_hypervolume(points, targets)
    return out


def found_at(history: Sequence[tuple[int, float]]) -> int | None:
    """The step (trial count) at which a best-so-far history first reached its final value."""
    if not history:
        return None
    ordered = sorted(history)
    final = ordered[-1][1]
    return next(step for step, value in ordered if value >= final)


def reached(history: Sequence[tuple[int, float]], fraction: float) -> int | None:
    """The first step at which a history reached ``fraction`` of its final value (None if the
    final value is not positive)."""
    ordered = sorted(history)
    if not ordered or not ordered[-1][1] > 0:
        return None
    goal = fraction * ordered[-1][1]
    return next(step for step, value in ordered if value >= goal)


def summary(
    method: str, targets: Sequence[float], histories: dict[str, list[tuple[int, float]]]
) -> dict[str, Any]:
    """One row of the convergence table from a parent run's metric histories (key -> [(step,
    value)]): trials finished, final hypervolume, the trial count at which it reached 90 % of
    that, and per target the trial count at which its final best was found."""
    hv = sorted(histories.get(hypervolume_key(method), []))
    row: dict[str, Any] = {
        "method": method,
        "trials": hv[-1][0] if hv else None,
        "hypervolume": hv[-1][1] if hv else None,
        "hv 90% at": reached(hv, 0.9),
    }
    for a in targets:
        row[f"best {a:g} at"] = found_at(histories.get(best_key(method, a), []))
    return row


def format_convergence(rows: Sequence[dict[str, Any]]) -> str:
    """The convergence rows as a terminal table; ``-`` where a target was never met."""
    if not rows:
        return ""
    head = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [head] + [[cell(r.get(k)) for k in head] for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
