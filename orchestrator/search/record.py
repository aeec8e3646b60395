"""The storage record: the searcher's trials written to an Optuna storage (a journal file or
an RDB) for people and dashboards, never read back for sampling. Finished trials are written
in batches (:meth:`StorageRecord.write`, at Ray's searcher checkpoints), each once, in the
study of the target it was suggested for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from orchestrator.search.outcomes import RAY_ID, Record


def open_storage(storage: str) -> str | optuna.storages.BaseStorage:
    """An Optuna RDB URL (``sqlite:///...``) as it is; any other string is the path of an
    Optuna journal file. The journal appends a line per trial; with SQLite (SQLAlchemy, a
    transaction per trial) a save writing 10 trials took 978 ms against 63 ms
    (docs/benchmarks.md, section 5)."""
    if "://" in storage:
        return storage
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(storage))


# (study index, optuna storage) -> that study in the storage
OpenStudy = Callable[[int, Any], optuna.Study]


class StorageRecord:
    """The record at ``url`` (None: no record). What a checkpoint keeps of it is the URL and
    how many finished trials were written; the open studies are reopened on demand."""

    def __init__(self, url: str | None) -> None:
        self.url, self.written = url, 0  # finished[:written] are in the record
        self._live()

    def _live(self) -> None:
        self._open: OpenStudy | None = None
        self._n = 0
        self._studies: list[optuna.Study] | None = None
        self._has: set[str] = set()  # ray ids the record already holds (after a restore)
        self._unsure = False  # a write failed part-way

    def bind(self, n_studies: int, open_study: OpenStudy) -> None:
        """The searcher's studies: how many, and how to open study k in a storage."""
        self._n, self._open = n_studies, open_study

    def studies(self) -> list[optuna.Study]:
        if self._studies is None:
            assert self._open is not None, "StorageRecord.bind first"
            storage = open_storage(self.url)
            self._studies = [self._open(k, storage) for k in range(self._n)]
        return self._studies

    def write(self, finished: Sequence[Record], freeze: Callable[[Record], FrozenTrial]) -> int:
        """Write the trials of ``finished`` (every finished trial, in finishing order) not
        written yet, each in its own study (``freeze``: as that study holds it); returns how
        many."""
        if self.url is None or self.written == len(finished):
            return 0
        if self._unsure:  # a write failed half-way: see what the record holds
            self.close_orphans()
        studies = self.studies()
        batch: list[list[FrozenTrial]] = [[] for _ in studies]
        for rec in finished[self.written :]:
            if rec.ray_id not in self._has:
                batch[rec.k].append(freeze(rec))
        self._unsure = True
        for study, trials in zip(studies, batch):
            if trials:
                study.add_trials(trials)
        self._unsure = False
        self.written = len(finished)
        return sum(len(b) for b in batch)

    def close_orphans(self) -> None:
        """After a restore: FAIL the RUNNING trials a killed driver left in the record (none
        are written by this version; older ones wrote asked trials), and note which finished
        trials it already holds, so that none is written twice."""
        if self.url is None:
            return
        self._unsure = False
        for study in self.studies():
            for t in study.get_trials(deepcopy=False):
                if t.state == TrialState.RUNNING:
                    study.tell(t.number, state=TrialState.FAIL)
                elif RAY_ID in t.user_attrs:
                    self._has.add(t.user_attrs[RAY_ID])

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "written": self.written}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.written = state["url"], state["written"]
        self._live()
