"""The replay log: what a checkpoint keeps of the searcher's studies, and how they come back.

Per trial its :class:`~orchestrator.search.outcomes.Record` (target, params, outcome,
figures), per study the order trials entered it, and each search space's distributions once.
:meth:`ReplayLog.replay` adds the logged trials to fresh in-memory studies under their
original numbers, so a restored searcher (with its pickled samplers) suggests what the
original would have."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from orchestrator.search.outcomes import RUNNING, Record


class ReplayLog:
    def __init__(self, n_studies: int) -> None:
        self.records: list[Record] = []
        self.serial: dict[str, int] = {}  # ray trial id -> index in records
        self.order: list[list[int]] = [[] for _ in range(n_studies)]  # records in study j's order
        self.finished: list[int] = []  # records in finishing order
        self.spaces: list[dict[str, BaseDistribution]] = []

    def __len__(self) -> int:
        return len(self.records)

    def suggested(self, ray_id: str, k: int, trial: optuna.Trial, epochs: int | None) -> int:
        """Log a trial study k was asked for; returns its serial number."""
        serial = len(self.records)
        self.records.append(
            Record(ray_id, k, trial.number, dict(trial.params), self._intern(trial.distributions), epochs)
        )
        self.serial[ray_id] = serial
        self.order[k].append(serial)
        return serial

    def running(self, ray_id: str) -> int | None:
        """The serial number of a trial still running, or None (another searcher's trial, or
        a completion Ray replays after a restore)."""
        serial = self.serial.get(ray_id)
        return serial if serial is not None and self.records[serial].outcome == RUNNING else None

    def entered(self, serial: int, j: int) -> None:
        """A copy of a finished trial entered study j (not its own)."""
        self.order[j].append(serial)

    def finish(self, serial: int) -> None:
        self.finished.append(serial)

    def distributions(self, rec: Record) -> dict[str, BaseDistribution]:
        return self.spaces[rec.space]

    def replay(
        self,
        studies: Sequence[optuna.Study],
        freeze: Callable[[Record, int], FrozenTrial],
        entered: Callable[[Record, int], Any],
    ) -> dict[int, optuna.Trial]:
        """Add the logged trials to ``studies`` (fresh, in memory), calling ``entered`` for
        each; returns the handles ``ask()`` gave for the trials still running, by serial."""
        handles: dict[int, optuna.Trial] = {}
        for j, study in enumerate(studies):
            for serial in self.order[j]:
                rec = self.records[serial]
                study.add_trial(freeze(rec, j))
                entered(rec, j)
                if rec.outcome == RUNNING and rec.k == j:
                    frozen = study.get_trials(deepcopy=False)[-1]
                    assert frozen.number == rec.number, (frozen.number, rec.number)
                    handles[serial] = optuna.Trial(study, frozen._trial_id)
        return handles

    def _intern(self, distributions: dict[str, BaseDistribution]) -> int:
        """The index of this set of distributions (one per search space, stored once)."""
        for i, d in enumerate(self.spaces):
            if d == distributions:
                return i
        self.spaces.append(dict(distributions))
        return len(self.spaces) - 1
