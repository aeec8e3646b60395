"""A Ray Tune Searcher over one constrained Optuna study per target accuracy, run side by side.

Why not plain ``OptunaSearch``: it holds one study with one (absent) constraint. Here the
study for target a_k maximises validation ACR with the Optuna constraint
``a_k - val_acc <= 0`` (``Trial.set_constraint``, Optuna 5), so TPE learns where the feasible
region of *that* target is. The design, and the problem each part answers (issue #10):

* **Side by side, not in phases.** All K studies are live from the first trial. Each
  ``suggest`` asks the study of the target that needs a trial most (:func:`choose_target`):
  a target with no feasible trial yet first (up to its even share of the budget), otherwise
  round robin. Phases chosen by suggestion count shared nothing once ``--max-concurrent``
  reached budget/K: every phase started before any trial had finished.
* **Share only into the good group.** A finished trial is told to its own study. It is
  *added* to another target's study, with the constraint recomputed for a_j, only where it is
  feasible for a_j or nearly (``val_acc >= a_j - share_margin``) *and* would rank in that
  study's TPE good group (:meth:`TargetSearcher._shared_with`). TPE's good group is
  ``min(ceil(0.1 n), 25)`` trials counted over the whole study (``TPESampler``'s default
  ``gamma``): warm-starting a study with every trial filled it with far-infeasible trials
  ranked only by how far they miss (the previous design); adding every *feasible* trial grows
  the study and with it the good group, which then takes in trials far above a_j, whose ACR
  is capped by the tradeoff, pulling the model away from a_j's constraint, where its best ACR
  is. A copy that could only join the bad group is therefore left out. (Measured in docs/benchmarks.md, section 5: over
  24 seeds the lowest target needed 1.5x the trials when every feasible trial was copied;
  over 10 seeds the difference was within the noise.)
* **Honest outcomes.** A trial that trained all its epochs is COMPLETE. One the scheduler
  stopped early is PRUNED with its last ACR as the intermediate value at its last epoch (TPE
  ranks PRUNED below every COMPLETE feasible trial): the epoch count of its last result is
  below its config's ``epochs``. Ray sets ``done`` on the result of a stopped trial too, so
  ``done`` cannot tell them apart. A trial that raised, reported a non-finite figure or
  ended marked ``diverged``/``timed_out`` (``trainers.metrics.ENDED``) is told as COMPLETE
  with the worst figures a model can have, val_acc = 0 and ACR = 0: maximally infeasible, so
  TPE puts it in the bad group and learns to avoid the region (a FAIL is ignored by TPE).
  Divergence is a property of the config, not of a target, so it is added to every study.
  A trial Ray cancelled before it ran is FAIL (nothing was measured).
* **Cheap at scale.** The studies live in memory (Optuna's in-memory storage): no database
  read per ask, even with ``constant_liar``, and no rescans: a finished trial costs one
  ``tell`` and at most K-1 ``add_trial``. What remains is TPE's own work, linear in the size
  of the asked study. The optional ``storage`` (an Optuna journal file, or an RDB URL such as
  SQLite) is a record for people and dashboards, never read back for sampling: finished
  trials are written in batches at Ray's searcher checkpoints (:meth:`flush`), each once, in
  the study of the target it was suggested for (:func:`open_storage` on the costs).
* **Pareto mode** (``pareto=True``), the alternative: one study maximising (val_acc, ACR),
  every trial searching for every target ("target" in its config is the lowest, the one it
  is judged against when it meets none), winners picked afterwards per target as always
  (:func:`orchestrator.pareto.select_winner`). It uses univariate TPE, which needed a third of
  the trials of multivariate TPE here. On the benchmark's stand-in it solved every target in
  fewer trials than the per-target studies at 1 and 8 trials in flight, but each ask works
  over every trial (not 1/K of them): a suggest cost 114 ms (median) against 19 ms at 1,000
  trials and 5 targets (docs/benchmarks.md, section 5). Outcomes as above, except that a
  stopped trial is PRUNED without an intermediate value (Optuna keeps none for several
  objectives) and a failed one is the point (0, 0), dominated by every measured trial.
* **Small checkpoints, exact resume.** What is pickled is a compact log (per trial: its target,
  params, outcome, figures; per study: the order trials entered it) plus the samplers' states,
  not the Optuna studies; unpickling replays the log into fresh in-memory studies, giving the
  same trials under the same numbers, so a restored searcher suggests what the original would
  have. Trials asked after the last checkpoint do not exist in the restored studies (nothing
  to close there); RUNNING trials left in the storage record by a killed driver are closed as
  FAIL on restore (:meth:`_close_orphans`). A trial is told once: a completion Ray replays after
  a restore finds its record already finished and is ignored.
"""

from __future__ import annotations

import bisect
import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from orchestrator.cli import format_target
from search_spaces import SearchSpace, SpaceContext
from trainers.metrics import DONE, ENDED, EPOCH, VAL_ACC, VAL_ACR

logger = logging.getLogger(__name__)
CONSTRAINT = "val_acc_shortfall"
RAY_ID = "ray_trial_id"
OUTCOME = "outcome"
SHARE_MARGIN = 0.02  # accuracy below a target within which a trial is still shared with it
WORST_ACC, WORST_VALUE = 0.0, 0.0  # what a failed or diverged trial is told as (ACR >= 0)
STATE_VERSION = 2
GOOD_GROUP_MAX = 25


def good_group_size(n: int) -> int:
    """The size of TPE's good group in a study of n finished trials: Optuna's
    ``default_gamma`` (single objective), ``min(ceil(0.1 n), 25)``."""
    return min(math.ceil(0.1 * n), GOOD_GROUP_MAX)


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


def choose_target(
    feasible: Sequence[bool], in_flight: Sequence[int], given: Sequence[int], share: float
) -> int:
    """The index of the target the next trial is for: the one that needs it most.

    1. A target with no feasible trial yet, while it has been given fewer than ``share``
       trials (its even share of the budget, so an unreachable target cannot take it all);
       among several, the fewest in flight, then the fewest given, then the lowest.
    2. Otherwise the target given the fewest trials so far (round robin), then the fewest in
       flight, then the lowest.

    Measured against alternatives in docs/benchmarks.md (section 5): giving the trial to the
    target whose best was improved least recently starves the others (a target that keeps
    improving never gets a trial of its own); a rising-bandit rule (most recent relative gain)
    did no better than round robin.
    """
    keys = [
        (0, in_flight[k], given[k], k) if not f and given[k] < share else (1, given[k], in_flight[k], k)
        for k, f in enumerate(feasible)
    ]
    return min(keys)[-1]


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


@dataclass(slots=True)
class Record:
    """One suggested trial, as the checkpoint keeps it."""

    ray_id: str
    k: int  # the target it was suggested for
    number: int  # its trial number in study k
    params: dict[str, Any]
    space: int  # index of its distributions in TargetSearcher._spaces
    epochs: int | None  # epochs its config asked for
    outcome: str = RUNNING
    acc: float = math.nan
    value: float = math.nan
    epoch: int | None = None


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
        share_margin: float = SHARE_MARGIN,
        n_startup_trials: int = 4,
        pareto: bool = False,
    ) -> None:
        super().__init__(metric=objective, mode="max")
        if not targets or list(targets) != sorted(set(targets)):
            raise ValueError(f"targets {targets!r} must be strictly increasing")
        if budget < 1:
            raise ValueError(f"budget={budget!r} must be >= 1")
        if not share_margin >= 0:
            raise ValueError(f"share_margin={share_margin!r} must be >= 0")
        n = 1 if pareto else len(targets)  # studies
        self._pareto = pareto
        self._space, self._ctx, self._targets, self._budget = space, ctx, tuple(targets), budget
        self._objective, self._margin, self._prefix, self._storage = (
            objective,
            share_margin,
            study_prefix,
            storage,
        )
        # constant_liar: trials in flight count as bad guesses, so that concurrent suggestions
        # spread out instead of piling on one point. Multivariate TPE per target; univariate
        # for the pareto study, where it needed a third of the trials (docs/benchmarks.md).
        self._samplers = [
            optuna.samplers.TPESampler(
                seed=seed + k, constant_liar=True, n_startup_trials=n_startup_trials, multivariate=not pareto
            )
            for k in range(n)
        ]
        self._records: list[Record] = []
        self._serial: dict[str, int] = {}  # ray trial id -> index in _records
        self._order: list[list[int]] = [[] for _ in range(n)]  # records in study k's trial-number order
        self._finished: list[int] = []  # records in finishing order
        self._spaces: list[dict[str, BaseDistribution]] = []
        self._best: list[float | None] = [None] * len(targets)  # best feasible value per target
        self._given, self._in_flight = [0] * n, [0] * n
        self._flushed = 0  # _finished[:_flushed] are in the storage record
        self._version = STATE_VERSION
        self._build()

    # --- Searcher interface ---------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space is ours; Tune's metric/mode (if any) are for reporting only

    def suggest(self, trial_id: str) -> dict | None:
        if len(self._records) >= self._budget:
            return Searcher.FINISHED
        k = self._choose_target()
        trial = self._studies[k].ask()
        trial.set_user_attr(RAY_ID, trial_id)
        config = self._space(trial, self._ctx)
        serial = len(self._records)
        epochs = config.get("epochs")
        self._records.append(
            Record(
                trial_id,
                k,
                trial.number,
                dict(trial.params),
                self._intern(trial.distributions),
                int(epochs) if epochs is not None else None,
            )
        )
        self._serial[trial_id] = serial
        self._order[k].append(serial)
        self._handles[serial] = trial
        self._given[k] += 1
        self._in_flight[k] += 1
        # pareto mode: a trial is for every target; its "target" is the loosest one (the
        # scheduler judges it for every target it meets)
        return {**config, "target": self._targets[0 if self._pareto else k]}

    def _choose_target(self) -> int:
        """The study to ask (the target's index; the one study in pareto mode)."""
        if self._pareto:
            return 0
        feasible = [b is not None for b in self._best]
        return choose_target(feasible, self._in_flight, self._given, self._budget / len(self._targets))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        serial = self._serial.get(trial_id)
        if serial is None or self._records[serial].outcome != RUNNING:
            return  # a trial from another searcher, or a completion replayed after a restore
        rec = self._records[serial]
        rec.outcome, m, rec.epoch = classify(result, error, rec.epochs, self._objective)
        if m is not None:
            rec.acc, rec.value = m
        self._tell(rec, self._handles.pop(serial))
        self._count(rec, rec.k)
        self._in_flight[rec.k] -= 1
        self._finished.append(serial)
        if rec.outcome == CANCELLED:
            return
        for j in range(len(self._studies)):
            if j != rec.k and self._shared_with(rec, j):
                self._studies[j].add_trial(self._frozen(rec, j))
                self._order[j].append(serial)
                self._count(rec, j)
        if m is not None:
            for j, a in enumerate(self._targets):
                if rec.acc >= a and (self._best[j] is None or rec.value > self._best[j]):
                    self._best[j] = rec.value

    # --- how a trial enters a study -------------------------------------------------
    def _shared_with(self, rec: Record, j: int) -> bool:
        """Whether study j gets a copy of ``rec``: only where it enters j's good group.

        A diverged or failed trial always (its region diverges whatever the target; TPE puts
        it in the bad group). A measured one only if it is feasible for a_j or nearly
        (``share_margin``) *and* TPE would rank it in j's good group: j has fewer feasible
        trials than the good group holds, or it beats j's ``good_group_size``-th best. A copy
        that would only join the bad group is left out: it would grow the study, and with it
        the good group (``ceil(0.1 n)``), pulling j's model towards trials that are feasible
        but far from j's constraint, where its best ACR is not.
        """
        if rec.outcome == FAILED:
            return True
        a = self._targets[j]
        if rec.outcome not in (COMPLETE, PRUNED) or rec.acc < a - self._margin:
            return False
        best = self._top[j]  # negated values of j's best feasible COMPLETE trials, ascending
        gamma = good_group_size(self._n_told[j] + 1)
        if len(best) < gamma:
            return True
        return rec.outcome == COMPLETE and rec.acc >= a and -rec.value < best[gamma - 1]

    def _count(self, rec: Record, j: int) -> None:
        """Keep study j's good-group statistics as a finished trial enters it."""
        if rec.outcome not in (COMPLETE, PRUNED, FAILED):
            return
        self._n_told[j] += 1
        if rec.outcome == COMPLETE and rec.acc >= self._targets[j]:
            bisect.insort(self._top[j], -rec.value)
            del self._top[j][GOOD_GROUP_MAX:]

    def _told(self, rec: Record) -> tuple[float, float]:
        """(val_acc, value) as the studies see them: the worst figures for a failed trial."""
        return (WORST_ACC, WORST_VALUE) if rec.outcome == FAILED else (rec.acc, rec.value)

    def _tell(self, rec: Record, trial: optuna.Trial) -> None:
        study = self._studies[rec.k]
        trial.set_user_attr(OUTCOME, rec.outcome)
        if rec.outcome == CANCELLED:
            study.tell(trial, state=TrialState.FAIL)
            return
        acc, value = self._told(rec)
        if self._pareto:  # Optuna has no intermediate values for several objectives
            if rec.outcome == PRUNED:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, [acc, value])
            return
        trial.set_constraint(CONSTRAINT, self._targets[rec.k] - acc)
        if rec.outcome == PRUNED:
            trial.report(value, rec.epoch or 0)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)

    def _frozen(self, rec: Record, j: int) -> optuna.trial.FrozenTrial:
        """Record ``rec`` as study j sees it (its own study: exactly what was told)."""
        common = {
            "params": rec.params,
            "distributions": self._spaces[rec.space],
            "user_attrs": {RAY_ID: rec.ray_id, OUTCOME: rec.outcome}
            | ({} if j == rec.k else {"shared_from": format_target(self._targets[rec.k])}),
        }
        if rec.outcome == RUNNING:
            return optuna.trial.create_trial(state=TrialState.RUNNING, **common)
        if rec.outcome == CANCELLED:
            return optuna.trial.create_trial(state=TrialState.FAIL, **common)
        acc, value = self._told(rec)
        if self._pareto:
            if rec.outcome == PRUNED:
                return optuna.trial.create_trial(state=TrialState.PRUNED, **common)
            return optuna.trial.create_trial(values=[acc, value], **common)
        constraints = {CONSTRAINT: self._targets[j] - acc}
        if rec.outcome == PRUNED:
            return optuna.trial.create_trial(
                state=TrialState.PRUNED,
                intermediate_values={rec.epoch or 0: value},
                constraints=constraints,
                **common,
            )
        return optuna.trial.create_trial(value=value, constraints=constraints, **common)

    def _intern(self, distributions: dict[str, BaseDistribution]) -> int:
        """The index of this set of distributions (one per search space, stored once)."""
        for i, d in enumerate(self._spaces):
            if d == distributions:
                return i
        self._spaces.append(dict(distributions))
        return len(self._spaces) - 1

    # --- in-memory studies, rebuilt from the log ------------------------------------
    def _study_name(self, k: int) -> str:
        return (
            f"{self._prefix}-pareto"
            if self._pareto
            else f"{self._prefix}-acc{format_target(self._targets[k])}"
        )

    def _new_study(self, k: int, sampler: optuna.samplers.BaseSampler, storage: Any = None) -> optuna.Study:
        directions = ["maximize", "maximize"] if self._pareto else ["maximize"]
        return optuna.create_study(
            study_name=self._study_name(k),
            storage=storage,
            sampler=sampler,
            directions=directions,
            load_if_exists=storage is not None,
        )

    def _build(self) -> None:
        """Fresh in-memory studies holding the logged trials under their original numbers."""
        self._studies = [self._new_study(k, sampler) for k, sampler in enumerate(self._samplers)]
        self._handles: dict[int, optuna.Trial] = {}
        self._mirror: list[optuna.Study] | None = None
        self._mirror_has: set[str] = set()  # ray ids the storage record already holds (restore)
        self._mirror_unsure = False  # a flush failed part-way
        self._n_told = [0] * len(self._studies)  # finished trials per study (TPE's n)
        self._top: list[list[float]] = [[] for _ in self._studies]
        for j, study in enumerate(self._studies):
            for serial in self._order[j]:
                rec = self._records[serial]
                study.add_trial(self._frozen(rec, j))
                self._count(rec, j)
                if rec.outcome == RUNNING and rec.k == j:
                    frozen = study.get_trials(deepcopy=False)[-1]
                    assert frozen.number == rec.number, (frozen.number, rec.number)
                    # optuna.Trial over the stored trial: the handle ask() would have returned
                    self._handles[serial] = optuna.Trial(study, frozen._trial_id)

    # --- the storage record ---------------------------------------------------------
    def _mirror_studies(self) -> list[optuna.Study]:
        if self._mirror is None:
            storage = open_storage(self._storage)
            self._mirror = [
                self._new_study(k, optuna.samplers.RandomSampler(), storage)
                for k in range(len(self._studies))
            ]
        return self._mirror

    def flush(self) -> int:
        """Write the trials finished since the last flush to the storage record, each in the
        study of its own target; returns how many. Called from :meth:`save`."""
        if self._storage is None or self._flushed == len(self._finished):
            return 0
        if self._mirror_unsure:  # a write failed half-way: see what the record holds
            self._close_orphans()
        studies = self._mirror_studies()
        batch: list[list[optuna.trial.FrozenTrial]] = [[] for _ in self._studies]
        for serial in self._finished[self._flushed :]:
            rec = self._records[serial]
            if rec.ray_id not in self._mirror_has:
                batch[rec.k].append(self._frozen(rec, rec.k))
        self._mirror_unsure = True
        for study, trials in zip(studies, batch):
            if trials:
                study.add_trials(trials)
        self._mirror_unsure = False
        self._flushed = len(self._finished)
        return sum(len(b) for b in batch)

    def _close_orphans(self) -> None:
        """After a restore: FAIL the RUNNING trials a killed driver left in the storage record
        (none are written by this version; older ones wrote asked trials), and note which
        finished trials it already holds, so that none is written twice."""
        if self._storage is None:
            return
        self._mirror_unsure = False
        for study in self._mirror_studies():
            for t in study.get_trials(deepcopy=False):
                if t.state == TrialState.RUNNING:
                    study.tell(t.number, state=TrialState.FAIL)
                elif RAY_ID in t.user_attrs:
                    self._mirror_has.add(t.user_attrs[RAY_ID])

    # --- persistence ----------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for live in ("_studies", "_handles", "_mirror", "_mirror_has", "_mirror_unsure", "_n_told", "_top"):
            state.pop(live, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
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
            logger.exception("writing trials to the Optuna storage %s failed", self._storage)
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__setstate__(pickle.load(f))
        self._close_orphans()

    # --- inspection (tests, progress, benchmarks) -----------------------------------
    @property
    def studies(self) -> list[optuna.Study]:
        return list(self._studies)

    @property
    def n_suggested(self) -> int:
        return len(self._records)

    @property
    def targets(self) -> tuple[float, ...]:
        return self._targets

    def best_feasible(self) -> list[float | None]:
        """Best feasible objective value per target among finished trials (None: none yet)."""
        return list(self._best)
