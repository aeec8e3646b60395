"""The confirm stage (``--confirm-seeds K``): retrain each target's best candidates with fresh
seeds before the frontier trusts them.

A search winner is the best of many draws on one seed, so its validation accuracy is partly
luck. For each method and target the candidates are its feasible trials in winner order
(:func:`ranked_candidates`); the first is retrained ``K`` times with fresh seeds (``train_seed``:
initialisation and data order; the validation split keeps the sweep's ``seed``). A candidate
whose mean validation accuracy over the retrains is below the target is *not confirmed* and the
next one is tried, up to ``--confirm-candidates``. The retrains of a confirmed candidate are
certified on the test set (``evaluation.evaluate_winners``, cached in ``test_eval.json``), and
the frontier reports their mean and 95 % interval (``orchestrator.intervals``).

The retrains are Ray Tune trials of ``orchestrator.trainable`` (the sweep's resources,
checkpoints, retries, SIGTERM handling), one Tune experiment per round of candidates
(``<sweep>/confirm-<round>``); a resumed sweep restores it, so a finished retrain is not run
again. Each retrain gets an MLflow child run of the parent (role ``confirm``), written through
the sweep's tracker (an outage is survived in its journal), with its epochs' metrics as it trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.killpoints import kill_point
from orchestrator.pareto import TrialPoint, select_winner
from trainers import metrics as M

ROLE = "confirm"
CONFIRMED, NOT_CONFIRMED = "confirmed", "not confirmed"


def candidate_pools(results: dict[str, Any]) -> dict[str, list[TrialPoint]]:
    """method -> the trials that may win a target: those with a checkpoint, as in
    ``evaluation.publish_frontier`` (``results``: method -> ``evaluation.MethodResults``)."""
    return {m: [p for p in r.points if p.trial_id in r.checkpoints] for m, r in results.items()}


def ranked_candidates(points: list[TrialPoint], target: float, limit: int | None = None) -> list[TrialPoint]:
    """The trials that could win ``target``, in winner order: the winner first (the rule of
    ``pareto.select_winner``), then the winner of the rest, and so on, ``limit`` at most."""
    left, out = list(points), []
    while left and (limit is None or len(out) < limit):
        w = select_winner(left, target)
        if w is None:
            break
        out.append(w)
        left = [p for p in left if p.trial_id != w.trial_id]
    return out


def confirm_seeds(cfg: SweepConfig) -> list[int]:
    """The fresh training seeds: never the sweep's own (its search trained on that one)."""
    return [cfg.seed + 1 + k for k in range(cfg.confirm_seeds)]


def retrain_key(method: str, trial_id: str, seed: int) -> str:
    """A retrain's name in the test cache and MLflow: the same in every resumed driver."""
    return f"confirm-{method}-{trial_id}-s{seed}"


@dataclass
class Retrain:
    """One retrained candidate at one seed: its validation figures and checkpoint."""

    key: str
    method: str
    of: str
    seed: int
    config: dict[str, Any]
    val_acc: float = math.nan
    val_acr: float = math.nan
    failed: bool = True
    checkpoint: Any = None
    test: dict[str, float] = field(default_factory=dict)

    @property
    def train_config(self) -> dict[str, Any]:
        return {**self.config, "train_seed": self.seed}


@dataclass
class Attempt:
    """One candidate tried for a (method, target): its retrains and the verdict."""

    trial_id: str
    rank: int
    keys: list[str]
    status: str = ""
    mean_val_acc: float = math.nan
    reason: str = ""


@dataclass
class TargetConfirmation:
    """The confirm stage's outcome for one method and target."""

    method: str
    target: float
    candidates: list[TrialPoint]
    attempts: list[Attempt] = field(default_factory=list)
    retrains: dict[str, Retrain] = field(default_factory=dict, repr=False)  # the stage's, shared

    @property
    def confirmed(self) -> Attempt | None:
        return next((a for a in self.attempts if a.status == CONFIRMED), None)

    @property
    def open(self) -> bool:
        """Still looking: nothing confirmed and an untried candidate left."""
        return self.confirmed is None and len(self.attempts) < len(self.candidates)


def judge(attempt: Attempt, retrains: dict[str, Retrain], target: float) -> None:
    """Confirmed when every retrain finished and their mean validation accuracy meets the target."""
    done = [retrains[k] for k in attempt.keys if k in retrains]
    failed = [r for r in done if r.failed or not math.isfinite(r.val_acc)]
    if len(done) < len(attempt.keys) or failed:
        attempt.status, attempt.reason = NOT_CONFIRMED, f"{len(failed) or 'a'} retrain(s) failed"
        return
    attempt.mean_val_acc = sum(r.val_acc for r in done) / len(done)
    if attempt.mean_val_acc >= target:
        attempt.status = CONFIRMED
    else:
        attempt.status = NOT_CONFIRMED
        attempt.reason = f"mean val_acc {attempt.mean_val_acc:.4f} over {len(done)} seeds < target {target:g}"


def plan(cfg: SweepConfig, pools: dict[str, list[TrialPoint]]) -> list[TargetConfirmation]:
    """Every (method, target) with its ranked candidates (``pools``: method -> trials that may win)."""
    return [
        TargetConfirmation(m, t, ranked_candidates(points, t, cfg.confirm_candidates))
        for m, points in pools.items()
        for t in cfg.accs
    ]


def next_round(
    cfg: SweepConfig, targets: list[TargetConfirmation], retrains: dict[str, Retrain]
) -> dict[str, Retrain]:
    """Start the next candidate of every open target; the retrains not trained yet (one
    candidate shared by several targets is trained once)."""
    todo: dict[str, Retrain] = {}
    for tc in targets:
        if not tc.open:
            continue
        cand = tc.candidates[len(tc.attempts)]
        keys = []
        for seed in confirm_seeds(cfg):
            key = retrain_key(tc.method, cand.trial_id, seed)
            keys.append(key)
            if key not in retrains and key not in todo:
                todo[key] = Retrain(key, tc.method, cand.trial_id, seed, dict(cand.config))
        tc.attempts.append(Attempt(cand.trial_id, len(tc.attempts) + 1, keys))
    return todo


def run_confirm(
    cfg: SweepConfig, pools: dict[str, list[TrialPoint]], tracker: Any
) -> list[TargetConfirmation]:
    """Rounds of retrains until every (method, target) is confirmed or out of candidates; then
    the confirmed retrains certified on the test set and every retrain recorded in MLflow."""
    from orchestrator.confirm_tune import run_round

    targets = plan(cfg, pools)
    retrains: dict[str, Retrain] = {}
    for tc in targets:
        tc.retrains = retrains
    rnd = 0
    while any(tc.open for tc in targets):
        rnd += 1
        todo = next_round(cfg, targets, retrains)
        if todo:
            retrains.update(run_round(cfg, rnd, todo, tracker))
            kill_point("after-confirm-round")
        for tc in targets:
            if tc.attempts and not tc.attempts[-1].status:
                judge(tc.attempts[-1], retrains, tc.target)
                say(tc, tc.attempts[-1])
    certify(cfg, targets, retrains)
    record(cfg, tracker, targets, retrains)
    return targets


@dataclass
class ConfirmOutcome:
    """What the confirm stage gives the frontier: which trial a row reports, and its fields."""

    targets: list[TargetConfirmation]

    def winner(self, method: str, target: float, pool: list[TrialPoint]) -> TrialPoint | None:
        """The row's trial: the confirmed candidate where one is, else the search's winner (its
        row then says "not confirmed"). A confirmed candidate that is not the search's winner
        replaces it everywhere: its test figures, the registered model, the winner tag."""
        tc = next((t for t in self.targets if (t.method, t.target) == (method, target)), None)
        a = tc.confirmed if tc is not None else None
        if a is not None:
            chosen = next((p for p in pool if p.trial_id == a.trial_id), None)
            if chosen is not None:
                return chosen
        return select_winner(pool, target)

    def extend_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from orchestrator.confirm_report import extend_rows

        return extend_rows(rows, self.targets)


def confirm_stage(cfg: SweepConfig, results: dict[str, Any], tracker: Any) -> ConfirmOutcome | None:
    """The sweep's stage (``--confirm-seeds K`` > 0) over its searches' ``results`` (method ->
    ``evaluation.MethodResults``), or None when the stage is off."""
    if not cfg.confirm_seeds:
        return None
    return ConfirmOutcome(run_confirm(cfg, candidate_pools(results), tracker))


def say(tc: TargetConfirmation, a: Attempt) -> None:
    why = f" ({a.reason})" if a.reason else f" (mean val_acc {a.mean_val_acc:.4f})"
    print(
        f"[confirm] {tc.method} @ {tc.target:g}: candidate {a.rank} {a.trial_id} {a.status}{why}", flush=True
    )


def certify(cfg: SweepConfig, targets: list[TargetConfirmation], retrains: dict[str, Retrain]) -> None:
    """Test figures of the confirmed candidates' retrains (cached with the winners')."""
    from orchestrator.evaluation import evaluate_winners

    todo = {
        k: (retrains[k].checkpoint, retrains[k].train_config)
        for tc in targets
        if (a := tc.confirmed) is not None
        for k in a.keys
    }
    for key, figures in evaluate_winners(cfg, todo).items():
        retrains[key].test = figures


def record(
    cfg: SweepConfig, tracker: Any, targets: list[TargetConfirmation], retrains: dict[str, Retrain]
) -> None:
    """Close each retrain's MLflow child run (role ``confirm``; ``ConfirmLogCallback`` opened it
    and logged its epochs), once: its checkpoint's validation (and, when certified, test)
    figures and the targets it confirmed."""

    verdicts: dict[str, list[str]] = {}
    for tc in targets:
        for a in tc.attempts:
            for k in a.keys:
                verdicts.setdefault(k, []).append(f"{tc.target:g}:{a.status}")
    for key, r in retrains.items():
        if recorded(tracker, key):
            continue
        open_run(cfg, tracker, r)
        tracker.tag_trial(key, {"confirm.verdicts": ",".join(verdicts.get(key, []))})
        # the test figures at the last epoch's step; the validation ones only where no epoch
        # was logged (a run closed by a driver older than the per-epoch logging)
        step = tracker.last_step(key, M.VAL_ACR)
        figures = dict(r.test) if step >= 0 else {M.VAL_ACC: r.val_acc, M.VAL_ACR: r.val_acr, **r.test}
        tracker.log_trial_metrics(
            key, {k: v for k, v in figures.items() if math.isfinite(v)}, step=max(step, 0)
        )
        tracker.end_trial(key, status="FAILED" if r.failed else "FINISHED")


def open_run(cfg: SweepConfig, tracker: Any, r: Retrain) -> None:
    """The retrain's MLflow child run (role ``confirm``), opened once: params and tags."""
    from orchestrator.tracking import TAG_ROLE
    from orchestrator.tracking.names import TAG_METHOD

    if tracker.has_trial(r.key):
        return
    # journalled under "<method>:confirm": the search's bookkeeping of <method> leaves it alone
    params = {**cfg.trial(r.train_config).to_dict(), **r.train_config, "confirm_of": r.of}
    tracker.trial(r.key, f"{r.method}:{ROLE}", params)
    tracker.tag_trial(
        r.key,
        {
            TAG_ROLE: ROLE,
            TAG_METHOD: r.method,
            "mlflow.runName": r.key,
            "confirm.of": r.of,
            "confirm.seed": str(r.seed),
        },
    )


def recorded(tracker: Any, key: str) -> bool:
    """The retrain's run was closed by an earlier driver (one killed before closing it is
    recorded again: its run is found by name, its params and tags are set again)."""
    state = tracker.journal.state.trials.get(key)
    return state is not None and state.status != "RUNNING"
