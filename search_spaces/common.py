"""Pieces shared by the spaces: the trade-off knobs (training radius cap and loss mixing), the
radius-growth schedule and the optimiser.

Every certified method draws its trade-off knobs from :func:`suggest_tradeoff`, so that no
method's frontier is limited by a narrower range than another's (issue #21): under
``--protocol tuned`` the cap ``max_eps`` is searched log-uniformly on [1/8, 2] x the data set's
radius and 1 - kappa log-uniformly on [0.01, 1] (kappa in [0, 0.99], dense near the accurate
end where a small change of kappa moves accuracy most); under ``--protocol paper`` the cap is
the data set's radius and only kappa (with the schedule and optimiser) is searched.
"""

from __future__ import annotations

from typing import Any

from search_spaces import COMPLEMENT, SpaceContext, SuggestTrial

# The published peak learning rates are 1e-3 (MNIST) and 2e-3 (CIFAR-10, TinyImageNet) with
# Adam and the one-cycle schedule; the range is a factor of 2.5 around them. Trials far below
# it (2e-4 and less) ended one epoch in far below every target (issue #13).
LR_RANGE = (5e-4, 5e-3)
# The training radius cap as multiples of the data set's radius (--protocol tuned): a smaller
# cap buys clean accuracy, a larger one is the usual way to certify up to the data set's radius.
CAP_RANGE = (1 / 8, 2.0)
# 1 - kappa, searched on a log scale: kappa from 0 (robust loss only) to 0.99.
ONE_MINUS_KAPPA_RANGE = (0.01, 1.0)


def suggest_tradeoff(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    """The training radius cap ``max_eps`` and the loss mixing, as ``ctx.protocol`` says."""
    return {**suggest_cap(trial, ctx), **suggest_kappa(trial)}


def suggest_cap(trial: SuggestTrial, ctx: SpaceContext) -> dict[str, Any]:
    if ctx.protocol == "paper":
        return {"max_eps": ctx.ref_eps}
    low, high = (ctx.ref_eps * f for f in CAP_RANGE)
    return {"max_eps": trial.suggest_float("max_eps", low, high, log=True)}


def suggest_kappa(trial: SuggestTrial) -> dict[str, Any]:
    """The loss mixing (1 - kappa) L_rob + kappa L_std: constant, as in the paper, or moving
    linearly to ``kappa_final`` by the last epoch (sampled only then, over the same range)."""
    kappa = _complement(trial, "kappa")
    if trial.suggest_categorical("kappa_schedule", ["constant", "linear"]) == "constant":
        return {"kappa": kappa, "kappa_final": kappa}
    return {"kappa": kappa, "kappa_final": _complement(trial, "kappa_final")}


def _complement(trial: SuggestTrial, name: str) -> float:
    # max: a log-scale sample of the upper end may exceed 1.0 by an ulp; kappa < 0 is refused
    return max(1.0 - trial.suggest_float(COMPLEMENT + name, *ONE_MINUS_KAPPA_RANGE, log=True), 0.0)


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


def suggest_optimiser(trial: SuggestTrial) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", *LR_RANGE, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
    }
