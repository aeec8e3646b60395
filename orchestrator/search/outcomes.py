"""What every part of the searcher shares: a trial's log entry (:class:`Record`), its outcome
(:func:`classify`) and the figures the studies are told (:func:`told`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainers.metrics import DONE, ENDED, EPOCH, VAL_ACC, VAL_ACR

CONSTRAINT = "val_acc_shortfall"
RAY_ID = "ray_trial_id"
OUTCOME = "outcome"
SHARED_FROM = "shared_from"
WORST_ACC, WORST_VALUE = 0.0, 0.0  # what a failed or diverged trial is told as (ACR >= 0)

# outcomes of a trial (Record.outcome)
RUNNING, COMPLETE, PRUNED, FAILED, CANCELLED = "running", "complete", "pruned", "failed", "cancelled"


def measured(result: dict | None, objective: str = VAL_ACR) -> tuple[float, float] | None:
    """(val_acc, objective) of a result, or None when missing or not finite (diverged)."""
    if not result:
        return None
    try:
        acc, value = float(result[VAL_ACC]), float(result[objective])
    except (KeyError, TypeError, ValueError):
        return None
    return (acc, value) if math.isfinite(acc) and math.isfinite(value) else None


def classify(
    result: dict | None, error: bool, epochs: int | None, objective: str = VAL_ACR
) -> tuple[str, tuple[float, float] | None, int | None]:
    """(outcome, (val_acc, objective) or None, last epoch) of a finished trial.

    ``epochs`` is the number the trial's config asked for: a last result at a lower epoch
    means the scheduler stopped it (PRUNED). Without ``epochs`` the trainer's ``done`` flag
    decides (Ray also sets it on stopped trials, so it is only a fallback).
    """
    if error or any((result or {}).get(k) for k in ENDED):  # raised, diverged or timed out
        return FAILED, None, None
    if not result:
        return CANCELLED, None, None
    m = measured(result, objective)
    if m is None:
        return FAILED, None, None
    epoch = result.get(EPOCH)
    epoch = int(epoch) if isinstance(epoch, int | float) and math.isfinite(epoch) else None
    if epochs is not None and epoch is not None:
        return (COMPLETE if epoch >= epochs else PRUNED), m, epoch
    return (COMPLETE if result.get(DONE) else PRUNED), m, epoch


@dataclass(slots=True)
class Record:
    """One suggested trial, as the checkpoint keeps it."""

    ray_id: str
    k: int  # the study it was suggested from (the target's index; 0 for the one Pareto study)
    number: int  # its trial number in study k
    params: dict[str, Any]
    space: int  # index of its distributions in ReplayLog.spaces
    epochs: int | None  # epochs its config asked for
    outcome: str = RUNNING
    acc: float = math.nan
    value: float = math.nan
    epoch: int | None = None


def told(rec: Record) -> tuple[float, float]:
    """(val_acc, value) as the studies see them: the worst figures for a failed trial."""
    return (WORST_ACC, WORST_VALUE) if rec.outcome == FAILED else (rec.acc, rec.value)
