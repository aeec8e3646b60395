"""Pieces shared by the spaces: the radius-growth schedule, loss mixing and the optimiser."""

from __future__ import annotations

from typing import Any

from search_spaces import SpaceContext, SuggestTrial

# The published peak learning rates are 1e-3 (MNIST) and 2e-3 (CIFAR-10, TinyImageNet) with
# Adam and the one-cycle schedule (PAPER.md); the range is a factor of 2.5 around them. Trials
# far below it (2e-4 and less) ended one epoch in far below every target (issue #13).
LR_RANGE = (5e-4, 5e-3)


def suggest_schedule(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    """Every trial trains for the sweep's ``--epochs`` (the user's budget, as the paper's fixed
    schedules: stopping a poor trial early is the scheduler's job, not the search's); standard
    epochs and ramp length are *fractions* of them (the paper: 1 then 20 of 100, 1 then 80 of
    200), so that one space serves every budget."""
    epochs = ctx.max_epochs
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


def suggest_kappa(trial: SuggestTrial, high: float) -> dict[str, Any]:
    """The loss mixing (1 - kappa) L_rob + kappa L_std: constant, as in the paper, or moving
    linearly to ``kappa_final`` by the last epoch (sampled only then)."""
    kappa = trial.suggest_float("kappa", 0.0, high)
    if trial.suggest_categorical("kappa_schedule", ["constant", "linear"]) == "constant":
        return {"kappa": kappa, "kappa_final": kappa}
    return {"kappa": kappa, "kappa_final": trial.suggest_float("kappa_final", 0.0, 0.9)}


def suggest_optimiser(trial: SuggestTrial) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
    }
