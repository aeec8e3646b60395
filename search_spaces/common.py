"""Pieces shared by the spaces: the epoch budget and the radius-growth schedule."""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial


def suggest_schedule(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    """Epochs within the budget, then standard epochs and ramp length as *fractions* of them.

    Fractions rather than epoch counts keep every distribution fixed across trials (Optuna's
    TPE models one distribution per name), while the epoch budget varies per trial.
    """
    low = max(1, (ctx.max_epochs + 1) // 2)
    epochs = trial.suggest_int("epochs", low, ctx.max_epochs) if low < ctx.max_epochs else ctx.max_epochs
    std_frac = trial.suggest_float("std_frac", 0.0, 0.3)
    ramp_frac = trial.suggest_float("ramp_frac", 0.2, 0.8)
    std_epochs = min(int(round(std_frac * epochs)), epochs - 1)
    ramp_epochs = min(int(round(ramp_frac * epochs)), epochs - std_epochs)
    return {
        "epochs": epochs,
        "std_epochs": std_epochs,
        "ramp_epochs": ramp_epochs,
        "ramp_shape": trial.suggest_categorical("ramp_shape", ["smooth", "linear"]),
    }


def suggest_optimiser(trial: SuggestTrial) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", 1e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
    }
