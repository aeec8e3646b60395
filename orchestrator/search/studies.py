"""The Optuna studies behind the targets, one kind per ``--search`` option (:data:`SEARCHES`).

A kind says how many studies a search holds, what each is named and maximises, the sampler of
each, and how a finished trial is told to a study or written into one (:meth:`Studies.freeze`,
used for copies, for the replay of a checkpoint and for the storage record):

* ``targets`` (:class:`ConstrainedStudies`, the default): one study per target a_k,
  maximising validation ACR under the Optuna constraint ``a_k - val_acc <= 0``
  (``Trial.set_constraint``), multivariate TPE;
* ``pareto`` (:class:`ParetoStudy`): one study maximising (val_acc, ACR), univariate TPE
  (a third of the trials of multivariate TPE here, docs/benchmarks.md); every trial searches
  for every target and winners are read off per target afterwards;
* ``gp``: as ``targets`` with Optuna's ``GPSampler`` (Gaussian process, log constrained
  expected improvement; it reads the constraint set on the trial, and needs torch and scipy).
  Every finished trial enters every study (:class:`~orchestrator.search.sharing.ShareMeasured`):
  a GP models the whole objective and constraint surfaces, so more points make a better model,
  and it has no good group to dilute. It learns from COMPLETE trials only (a trial the
  scheduler stopped is PRUNED), and a suggestion costs seconds, not milliseconds, growing
  with the trials in flight (its batch acquisition conditions on every one of them).

All samplers see trials in flight as such: TPE with ``constant_liar`` (they count as bad
guesses, so that concurrent suggestions spread out), GP through its batch acquisition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.config import format_target
from orchestrator.search.outcomes import (
    CANCELLED,
    CONSTRAINT,
    OUTCOME,
    PRUNED,
    RUNNING,
    Record,
    told,
)
from orchestrator.search.sharing import GoodGroupSharing, ShareMeasured, SharingRule

SamplerFactory = Callable[[int, int, int], optuna.samplers.BaseSampler]  # (k, seed, n_startup)


def study_seed(seed: int, k: int, legacy: bool = False) -> int:
    """The sampler seed of study k of a sweep seeded ``seed``: drawn from the pair, so that sweeps
    of neighbouring seeds share no study's random stream (with ``seed + k``, the ``legacy`` rule,
    study k+1 of the sweep seeded s drew exactly what study k of the sweep seeded s+1 drew, and a
    reproducibility check over two seeds compared partly the same draws). Every method's study k
    of one sweep gets the same seed: their start-up draws are the same configurations."""
    if legacy:
        return seed + k
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


@dataclass(frozen=True)
class TPE:
    """TPE for study k, seeded ``study_seed(seed, k)`` (a class, not a closure: checkpoints
    pickle it); ``legacy_seed``: ``seed + k``, the rule before (tests pin suggestions with it)."""

    multivariate: bool
    legacy_seed: bool = False

    def __call__(self, k: int, seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=study_seed(seed, k, self.legacy_seed),
            constant_liar=True,
            n_startup_trials=n_startup,
            multivariate=self.multivariate,
        )


def gp(k: int, seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(
        seed=study_seed(seed, k), n_startup_trials=n_startup, warn_independent_sampling=False
    )


class Studies:
    """What the kinds share: the outcome as a user attribute, a cancelled trial as FAIL."""

    name = ""
    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, sampler: SamplerFactory, name: str | None = None, share_all: bool = False) -> None:
        self.sampler, self.name, self.share_all = sampler, name or self.name, share_all

    def sharing(self) -> SharingRule:
        """The sharing rule this kind's samplers want (when none is injected)."""
        return ShareMeasured() if self.share_all else GoodGroupSharing()

    def n_studies(self, n_targets: int) -> int:
        raise NotImplementedError

    def study_name(self, prefix: str, targets: Sequence[float], k: int) -> str:
        raise NotImplementedError

    def target_of(self, targets: Sequence[float], k: int) -> float:
        """The target a trial suggested from study k carries (and is judged against)."""
        raise NotImplementedError

    def samplers(self, n_targets: int, seed: int, n_startup: int) -> list[optuna.samplers.BaseSampler]:
        return [self.sampler(k, seed, n_startup) for k in range(self.n_studies(n_targets))]

    def create(self, name: str, sampler: optuna.samplers.BaseSampler, storage: Any = None) -> optuna.Study:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler,
            directions=list(self.directions),
            load_if_exists=storage is not None,
        )

    def tell(self, study: optuna.Study, trial: optuna.Trial, rec: Record, target: float) -> None:
        """Tell the study the finished trial ``rec`` it asked for (``target``: the study's)."""
        trial.set_user_attr(OUTCOME, rec.outcome)
        if rec.outcome == CANCELLED:
            study.tell(trial, state=TrialState.FAIL)
        else:
            self.tell_measured(study, trial, rec, target)

    def freeze(self, rec: Record, target: float, common: dict[str, Any]) -> FrozenTrial:
        """``rec`` as a study with ``target`` holds it; ``common``: params, distributions,
        user_attrs (its own study: exactly what :meth:`tell` told)."""
        if rec.outcome == RUNNING:
            return optuna.trial.create_trial(state=TrialState.RUNNING, **common)
        if rec.outcome == CANCELLED:
            return optuna.trial.create_trial(state=TrialState.FAIL, **common)
        return self.freeze_measured(rec, target, common)

    def tell_measured(self, study: optuna.Study, trial: optuna.Trial, rec: Record, target: float) -> None:
        raise NotImplementedError

    def freeze_measured(self, rec: Record, target: float, common: dict[str, Any]) -> FrozenTrial:
        raise NotImplementedError


class ConstrainedStudies(Studies):
    """One study per target, maximising the objective under ``target - val_acc <= 0``. A
    stopped trial is PRUNED with its last value as the intermediate value at its last epoch
    (TPE ranks PRUNED below every COMPLETE feasible trial)."""

    name = "targets"

    def __init__(
        self, sampler: SamplerFactory | None = None, name: str | None = None, share_all: bool = False
    ) -> None:
        super().__init__(sampler or TPE(multivariate=True), name, share_all)

    def n_studies(self, n_targets: int) -> int:
        return n_targets

    def study_name(self, prefix: str, targets: Sequence[float], k: int) -> str:
        return f"{prefix}-acc{format_target(targets[k])}"

    def target_of(self, targets: Sequence[float], k: int) -> float:
        return targets[k]

    def tell_measured(self, study: optuna.Study, trial: optuna.Trial, rec: Record, target: float) -> None:
        acc, value = told(rec)
        trial.set_constraint(CONSTRAINT, target - acc)
        if rec.outcome == PRUNED:
            trial.report(value, rec.epoch or 0)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)

    def freeze_measured(self, rec: Record, target: float, common: dict[str, Any]) -> FrozenTrial:
        acc, value = told(rec)
        constraints = {CONSTRAINT: target - acc}
        if rec.outcome == PRUNED:
            return optuna.trial.create_trial(  # value: as tell() leaves it, the last one reported
                state=TrialState.PRUNED,
                value=value,
                intermediate_values={rec.epoch or 0: value},
                constraints=constraints,
                **common,
            )
        return optuna.trial.create_trial(value=value, constraints=constraints, **common)


class ParetoStudy(Studies):
    """One study maximising (val_acc, objective). A trial's "target" is the lowest, the one
    it is judged against when it meets none. A stopped trial is PRUNED without a value
    (Optuna keeps no intermediate values for several objectives); a failed one is the point
    (0, 0), dominated by every measured trial."""

    name = "pareto"
    directions = ("maximize", "maximize")

    def __init__(self, sampler: SamplerFactory | None = None, name: str | None = None) -> None:
        super().__init__(sampler or TPE(multivariate=False), name)

    def n_studies(self, n_targets: int) -> int:
        return 1

    def study_name(self, prefix: str, targets: Sequence[float], k: int) -> str:
        return f"{prefix}-pareto"

    def target_of(self, targets: Sequence[float], k: int) -> float:
        return targets[0]

    def tell_measured(self, study: optuna.Study, trial: optuna.Trial, rec: Record, target: float) -> None:
        if rec.outcome == PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, list(told(rec)))

    def freeze_measured(self, rec: Record, target: float, common: dict[str, Any]) -> FrozenTrial:
        if rec.outcome == PRUNED:
            return optuna.trial.create_trial(state=TrialState.PRUNED, **common)
        return optuna.trial.create_trial(values=list(told(rec)), **common)


SEARCHES: dict[str, Callable[[], Studies]] = {
    "targets": ConstrainedStudies,
    "pareto": ParetoStudy,
    "gp": lambda: ConstrainedStudies(gp, name="gp", share_all=True),
}
