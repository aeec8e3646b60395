"""A Ray Tune Searcher over one Optuna study per target accuracy, sharing every trial.

Why not plain ``OptunaSearch``: it holds one study with one (absent) constraint. Here the
targets a_1 < ... < a_K are searched in turn, the method's trial budget split evenly among
them. The study for a_k maximises validation ACR with the Optuna constraint
``a_k - val_acc <= 0`` (``Trial.set_constraint``, Optuna 5), so TPE learns where the feasible
region is. When the search moves to a_k, its study is warm-started with *every* trial finished
so far (``study.add_trial``, with the constraint recomputed for a_k), and trials of lower
targets that finish later are added as they come: no measurement is wasted, and the higher
targets start from a model of the whole space instead of from random search.

State: the studies live in an Optuna storage (SQLite under the sweep folder when it is local)
and this object is pickled into Ray's searcher checkpoint, so ``Tuner.restore`` continues the
same studies. Optuna trials the driver asked for but Ray never recorded (the driver killed in
between) are closed as FAIL on restore so they do not linger as RUNNING.
"""

from __future__ import annotations

import logging
import math
import pickle
from typing import Any

import optuna
from ray.tune.search import Searcher

from orchestrator.cli import format_target
from search_spaces import SearchSpace, SpaceContext

logger = logging.getLogger(__name__)
CONSTRAINT = "val_acc_shortfall"
RAY_ID = "ray_trial_id"


def phase_budgets(budget: int, n_targets: int) -> list[int]:
    """Trials per target: an even split, the remainder going to the lowest targets."""
    base, extra = divmod(budget, n_targets)
    return [base + (1 if k < extra else 0) for k in range(n_targets)]


def measured(result: dict | None, objective: str) -> tuple[float, float] | None:
    """(val_acc, objective) of a result, or None when missing or not finite (diverged)."""
    if not result:
        return None
    try:
        acc, value = float(result["val_acc"]), float(result[objective])
    except (KeyError, TypeError, ValueError):
        return None
    return (acc, value) if math.isfinite(acc) and math.isfinite(value) else None


class TargetSearcher(Searcher):
    """Proposes trial configs (``space`` output + ``target``) and learns from their results."""

    def __init__(
        self,
        space: SearchSpace,
        ctx: SpaceContext,
        targets: tuple[float, ...],
        budget: int,
        *,
        study_prefix: str,
        storage: str | None = None,
        seed: int = 0,
        objective: str = "val_acr",
    ) -> None:
        super().__init__(metric=objective, mode="max")
        if list(targets) != sorted(set(targets)):
            raise ValueError(f"targets {targets!r} must be strictly increasing")
        self._space, self._ctx, self._targets = space, ctx, tuple(targets)
        self._budgets = phase_budgets(budget, len(targets))
        self._objective, self._seed = objective, seed
        self._studies = [
            self._make_study(f"{study_prefix}-acc{format_target(a)}", storage, seed + k)
            for k, a in enumerate(targets)
        ]
        self._started: set[int] = set()
        self._n_suggested = 0
        self._live: dict[str, tuple[int, optuna.Trial]] = {}
        self._finished: dict[str, dict[str, Any]] = {}  # ray trial id -> record, in finishing order
        self._close_orphans()

    @staticmethod
    def _make_study(name: str, storage: str | None, seed: int) -> optuna.Study:
        # constant_liar: with concurrent trials, pending ones count as bad guesses so that
        # parallel suggestions spread out instead of piling on one point.
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=4)
        return optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
        )

    # --- Searcher interface ---------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space is ours; Tune's metric/mode (if any) are for reporting only

    def phase_of(self, index: int) -> int:
        """The target index the ``index``-th suggested trial searches for."""
        total = 0
        for k, n in enumerate(self._budgets):
            total += n
            if index < total:
                return k
        return len(self._budgets) - 1

    def suggest(self, trial_id: str) -> dict | None:
        if self._n_suggested >= sum(self._budgets):
            return Searcher.FINISHED
        k = self.phase_of(self._n_suggested)
        if k not in self._started:
            self._start_phase(k)
        trial = self._studies[k].ask()
        trial.set_user_attr(RAY_ID, trial_id)
        config = self._space(trial, self._ctx)
        self._live[trial_id] = (k, trial)
        self._n_suggested += 1
        return {**config, "target": self._targets[k], "search_phase": k}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._finished or trial_id not in self._live:
            return  # a second completion after a restore, or a trial from another searcher
        k, trial = self._live[trial_id]
        m = None if error else measured(result, self._objective)
        record = {
            "trial_id": trial_id,
            "params": dict(trial.params),
            "distributions": dict(trial.distributions),
            "measured": m,
        }
        self._tell(self._studies[k], trial, self._targets[k], m)
        for j in sorted(self._started):
            if j > k:  # higher targets already searching learn from this lower-target trial
                self._add(j, record)
        self._finished[trial_id] = record

    # --- warm start -----------------------------------------------------------------
    def _start_phase(self, k: int) -> None:
        for record in self._finished.values():
            self._add(k, record)
        self._started.add(k)
        logger.info("target %s: warm-started with %d finished trials", self._targets[k], len(self._finished))

    def _add(self, k: int, record: dict[str, Any]) -> None:
        """Copy a finished trial into study k, once (a replay after restore is skipped)."""
        study = self._studies[k]
        if any(t.user_attrs.get(RAY_ID) == record["trial_id"] for t in study.get_trials(deepcopy=False)):
            return
        m = record["measured"]
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE if m else optuna.trial.TrialState.FAIL,
                value=m[1] if m else None,
                params=record["params"],
                distributions=record["distributions"],
                user_attrs={RAY_ID: record["trial_id"], "warm_start": True},
                constraints={CONSTRAINT: self._targets[k] - m[0]} if m else None,
            )
        )

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, target: float, m: tuple[float, float] | None) -> None:
        # The storage (SQLite) may be ahead of our pickled state after a restore: never tell twice.
        stored = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if stored.state.is_finished():
            return
        if m is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        trial.set_constraint(CONSTRAINT, target - m[0])
        study.tell(trial, m[1])

    def _close_orphans(self) -> None:
        """FAIL the Optuna trials left RUNNING by a killed driver that Ray never recorded."""
        live = {(k, t.number) for k, t in self._live.values()}
        for k, study in enumerate(self._studies):
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if (k, t.number) not in live:
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    # --- persistence ----------------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._close_orphans()

    # --- inspection (tests, progress) -------------------------------------------------
    @property
    def studies(self) -> list[optuna.Study]:
        return list(self._studies)

    @property
    def n_suggested(self) -> int:
        return self._n_suggested
