"""A Ray Tune Searcher that finds, for each target accuracy a_k, the trial config with the
best validation ACR among those with val_acc >= a_k: :class:`TargetSearcher`.

Why not plain ``OptunaSearch``: it holds one study with one (absent) constraint. The design
is a composition of parts (``orchestrator.search``), each with one job and each injectable
through the constructor (the benchmark and the tests pass their own):

* **Policy** (:mod:`orchestrator.search.policy`): which target the next trial is for. All
  targets search from the first trial, side by side: the default gives it to a target with no
  feasible trial yet (up to its even share of the budget), else round robin. Phases chosen by
  suggestion count shared nothing once ``--max-concurrent`` reached budget/K: every phase
  started before any trial had finished (issue #10).
* **Studies** (:mod:`orchestrator.search.studies`, ``--search``): the Optuna studies and
  samplers. ``targets``: one constrained study per target (``a_k - val_acc <= 0`` through
  ``Trial.set_constraint``), multivariate TPE; ``pareto``: one study maximising (val_acc,
  ACR), univariate TPE, winners read off per target afterwards
  (:func:`orchestrator.pareto.select_winner`); ``gp``: per-target constrained studies with
  Optuna's GP sampler. On the benchmark's stand-in the Pareto study solved every target in
  fewer trials than the per-target studies at 1 and 8 trials in flight, but each of its asks
  works over every trial, not 1/K of them: 114 ms against 19 ms per suggest (median) at
  1,000 trials and 5 targets (docs/benchmarks.md, section 5).
* **Sharing** (:mod:`orchestrator.search.sharing`): a finished trial is told to its own study
  and *added* to another target's study, with the constraint recomputed for a_j, only where
  it is feasible for a_j or nearly *and* would rank in that study's TPE good group
  (``min(ceil(0.1 n), 25)`` trials of the whole study). Warm-starting a study with every
  trial filled its good group with far-infeasible trials; adding every feasible trial grows
  the good group with trials far above a_j, whose ACR is capped by the tradeoff (over 24
  seeds the lowest target needed 1.5x the trials; docs/benchmarks.md, section 5). ``gp``
  shares every finished trial: a GP has no good group, and more points model it better.
* **Replay log** (:mod:`orchestrator.search.replay`): checkpoints pickle a compact log plus
  the samplers' states, not the studies; restoring replays the log into fresh in-memory
  studies, so a restored searcher suggests what the original would have. Trials asked after
  the last checkpoint do not exist in the restored studies. A trial is told once: a
  completion Ray replays after a restore finds its record already finished and is ignored.
* **Storage record** (:mod:`orchestrator.search.record`): the optional Optuna storage
  (journal file or RDB URL) for people and dashboards, never read back for sampling: finished
  trials are written at Ray's searcher checkpoints, each once, and RUNNING trials a killed
  driver left there are closed as FAIL on restore. The studies themselves stay in memory: no
  database read per ask, and a finished trial costs one ``tell`` and at most K-1 ``add_trial``.

Honest outcomes (:func:`classify`): a trial that trained all its epochs is COMPLETE; one the
scheduler stopped is PRUNED (its last epoch is below its config's ``epochs``; Ray sets
``done`` on stopped trials too). A trial that raised, reported a non-finite figure or ended
``diverged``/``timed_out`` is told as COMPLETE with the worst figures, val_acc = 0 and ACR = 0:
maximally infeasible, so TPE learns to avoid its region (a FAIL is ignored by TPE); it is
added to every study. A trial Ray cancelled before it ran is FAIL (nothing was measured).
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import optuna
from ray.tune.search import Searcher

from orchestrator.config import format_target
from orchestrator.search.outcomes import (  # noqa: F401  (the searcher's public names)
    CANCELLED,
    COMPLETE,
    CONSTRAINT,
    FAILED,
    OUTCOME,
    PRUNED,
    RAY_ID,
    RUNNING,
    SHARED_FROM,
    WORST_ACC,
    WORST_VALUE,
    Record,
    classify,
    measured,
)
from orchestrator.search.policy import NeediestTarget, TargetPolicy, TargetView, choose_target  # noqa: F401
from orchestrator.search.record import StorageRecord, open_storage  # noqa: F401
from orchestrator.search.replay import ReplayLog
from orchestrator.search.sharing import SHARE_MARGIN, GoodGroupSharing, SharingRule, good_group_size  # noqa: F401
from orchestrator.search.studies import SEARCHES, Studies
from search_spaces import SearchSpace, SpaceContext
from trainers.metrics import VAL_ACR

logger = logging.getLogger(__name__)
STATE_VERSION = 3
DEFAULT_SEARCH = "targets"


def make_studies(search: str | Studies) -> Studies:
    """The studies of a ``--search`` option (a name of :data:`SEARCHES`), or ``search`` itself."""
    if isinstance(search, Studies):
        return search
    if search not in SEARCHES:
        raise ValueError(f"search={search!r}: choose one of {', '.join(SEARCHES)}")
    return SEARCHES[search]()


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
        objective: str = VAL_ACR,
        n_startup_trials: int = 4,
        search: str | Studies = DEFAULT_SEARCH,
        policy: TargetPolicy | None = None,
        sharing: SharingRule | None = None,
        record: StorageRecord | None = None,
    ) -> None:
        super().__init__(metric=objective, mode="max")
        if not targets or list(targets) != sorted(set(targets)):
            raise ValueError(f"targets {targets!r} must be strictly increasing")
        if budget < 1:
            raise ValueError(f"budget={budget!r} must be >= 1")
        self._kind = make_studies(search)
        self._policy = policy or NeediestTarget()
        self._sharing = sharing or self._kind.sharing()
        self._record = record or StorageRecord(storage)
        self._space, self._ctx, self._targets, self._budget = space, ctx, tuple(targets), budget
        self._objective, self._prefix = objective, study_prefix
        n = self._kind.n_studies(len(targets))
        self._samplers = self._kind.samplers(len(targets), seed, n_startup_trials)
        self._log = ReplayLog(n)
        self._best: list[float | None] = [None] * len(targets)  # best feasible value per target
        self._given, self._in_flight = [0] * n, [0] * n
        self._version = STATE_VERSION
        self._build()

    # --- Searcher interface ---------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space is ours; Tune's metric/mode (if any) are for reporting only

    def suggest(self, trial_id: str) -> dict | None:
        if len(self._log) >= self._budget:
            return Searcher.FINISHED
        # the policy picks among targets: asked where each target has its own study
        k = 0 if len(self._studies) == 1 else self._policy.choose(self._view())
        trial = self._studies[k].ask()
        trial.set_user_attr(RAY_ID, trial_id)
        config = self._space(trial, self._ctx)
        epochs = config.get("epochs")
        serial = self._log.suggested(trial_id, k, trial, int(epochs) if epochs is not None else None)
        self._handles[serial] = trial
        self._given[k] += 1
        self._in_flight[k] += 1
        return {**config, "target": self._kind.target_of(self._targets, k)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        serial = self._log.running(trial_id)
        if serial is None:
            return  # a trial from another searcher, or a completion replayed after a restore
        rec = self._log.records[serial]
        rec.outcome, m, rec.epoch = classify(result, error, rec.epochs, self._objective)
        if m is not None:
            rec.acc, rec.value = m
        self._kind.tell(self._studies[rec.k], self._handles.pop(serial), rec, self._study_target(rec.k))
        self._sharing.entered(rec, rec.k)
        self._in_flight[rec.k] -= 1
        self._log.finish(serial)
        if rec.outcome != CANCELLED:
            for j in range(len(self._studies)):
                if j != rec.k and self._sharing.shares(rec, j):
                    self._studies[j].add_trial(self._freeze(rec, j))
                    self._log.entered(serial, j)
                    self._sharing.entered(rec, j)
        if m is not None:
            for j, a in enumerate(self._targets):
                if rec.acc >= a and (self._best[j] is None or rec.value > self._best[j]):
                    self._best[j] = rec.value
        self._policy.observe(self._view())

    # --- the parts, wired ---------------------------------------------------------------
    def _view(self) -> TargetView:
        return TargetView(
            self._targets, self._best, self._given, self._in_flight, self._budget, len(self._log.finished)
        )

    def _study_target(self, j: int) -> float:
        return self._kind.target_of(self._targets, j)

    def _freeze(self, rec: Record, j: int) -> optuna.trial.FrozenTrial:
        """``rec`` as study j holds it (its own study: exactly what was told)."""
        attrs = {RAY_ID: rec.ray_id, OUTCOME: rec.outcome}
        if j != rec.k:
            attrs[SHARED_FROM] = format_target(self._targets[rec.k])
        common = {"params": rec.params, "distributions": self._log.distributions(rec), "user_attrs": attrs}
        return self._kind.freeze(rec, self._study_target(j), common)

    def _open_study(self, k: int, sampler: optuna.samplers.BaseSampler, storage: Any = None) -> optuna.Study:
        return self._kind.create(self._kind.study_name(self._prefix, self._targets, k), sampler, storage)

    def _build(self) -> None:
        """Fresh in-memory studies holding the logged trials under their original numbers."""
        self._studies = [self._open_study(k, s) for k, s in enumerate(self._samplers)]
        self._sharing.reset([self._study_target(j) for j in range(len(self._studies))])
        self._handles = self._log.replay(self._studies, self._freeze, self._sharing.entered)
        self._record.bind(
            len(self._studies),
            lambda k, storage: self._open_study(k, optuna.samplers.RandomSampler(), storage),
        )

    # --- persistence ----------------------------------------------------------------
    def flush(self) -> int:
        """Write the trials finished since the last flush to the storage record; returns how
        many. Called from :meth:`save`."""
        finished = [self._log.records[s] for s in self._log.finished]
        return self._record.write(finished, lambda rec: self._freeze(rec, rec.k))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for live in ("_studies", "_handles"):
            state.pop(live, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("_version") == 2:
            from orchestrator.search.migrate import from_version_2

            state = from_version_2(state)
        if state.get("_version") != STATE_VERSION:
            raise ValueError(
                f"searcher state version {state.get('_version')!r} is not {STATE_VERSION}: this sweep "
                "was checkpointed by an older TargetSearcher; finish it with that version or start a new sweep"
            )
        self.__dict__.update(state)
        self._build()

    def save(self, checkpoint_path: str) -> None:
        try:
            self.flush()
        except Exception:  # the record must not stop the sweep; the next save retries
            logger.exception("writing trials to the Optuna storage %s failed", self._record.url)
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
        self._record.close_orphans()

    # --- inspection (tests, progress, benchmarks) -----------------------------------
    @property
    def studies(self) -> list[optuna.Study]:
        return list(self._studies)

    @property
    def record(self) -> StorageRecord:
        return self._record

    @property
    def search(self) -> str:
        return self._kind.name

    @property
    def n_suggested(self) -> int:
        return len(self._log)

    @property
    def targets(self) -> tuple[float, ...]:
        return self._targets

    def best_feasible(self) -> list[float | None]:
        """Best feasible objective value per target among finished trials (None: none yet)."""
        return list(self._best)
