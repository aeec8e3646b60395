"""After the search: pick each target's winner on validation, measure it on the test set, and
publish the frontier (files, MLflow artifacts, registered models).

Selection is honest: winners are chosen from validation figures only; the test set is touched
once per winner, and those test figures are the reported frontier. Test results are cached in
the sweep folder (``test_eval.json``) so a sweep resumed after this stage does not redo them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.config import TRIAL_META_KEYS, SweepConfig, format_target, is_remote_uri
from orchestrator.killpoints import kill_point
from orchestrator.pareto import TrialPoint, select_winner
from orchestrator.searcher import measured
from orchestrator.storage import read_text, write_text
from trainers import metrics as M
from trainers.config import TrainConfig

TEST_CACHE = "test_eval.json"
# Tune adds it to every result: the checkpoint reported with that result, or None
CHECKPOINT_DIR = "checkpoint_dir_name"


@dataclass
class MethodResults:
    """Every trial of one method's search, with its latest checkpoint (None if it has none)."""

    method: str
    points: list[TrialPoint] = field(default_factory=list)
    checkpoints: dict[str, Any] = field(default_factory=dict)


def checkpointed_metrics(result: Any) -> dict[str, Any]:
    """The metrics of the epoch a trial's latest checkpoint holds. Trials checkpoint every
    ``--checkpoint-every`` epochs, at their last one and where the scheduler may stop them, so
    these are their last metrics, except for a trial interrupted between two checkpoints: it is
    judged by the model that was saved, not by a later epoch nobody can evaluate."""
    metrics = result.metrics or {}
    if result.checkpoint is None:
        return metrics
    name = Path(result.checkpoint.path).name
    if metrics.get(CHECKPOINT_DIR) == name:
        return metrics
    df = result.metrics_dataframe
    if df is not None and CHECKPOINT_DIR in df:
        rows = df[df[CHECKPOINT_DIR] == name]
        if len(rows):
            return rows.iloc[-1].to_dict()
    return {}


def collect_points(grid: Any, method: str, epochs: int | None = None) -> MethodResults:
    """ResultGrid -> TrialPoints, measured at each trial's latest checkpoint, with the epoch of
    that checkpoint and the trial's budget (its config's ``epochs``, else ``epochs``, the
    sweep's): a trial the scheduler stopped early is drawn but cannot win. A trial that errored
    or never reported a finite result is kept as failed: it is plotted nowhere but counted in
    the trial totals."""
    out = MethodResults(method)
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        metrics = checkpointed_metrics(result)
        m = measured(metrics, M.VAL_ACR)
        acc, acr = m if m else (math.nan, math.nan)
        config = {k: v for k, v in (result.config or {}).items()}
        ended = any((result.metrics or {}).get(k) for k in M.ENDED)
        out.points.append(
            TrialPoint(
                trial_id,
                acc,
                acr,
                method,
                config,
                failed=result.error is not None or ended,
                epoch=_int_or_none(metrics.get(M.EPOCH)),
                budget=_int_or_none(config.get("epochs", epochs)),
            )
        )
        if result.checkpoint is not None:
            out.checkpoints[trial_id] = result.checkpoint
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):  # missing, or NaN in a metrics table
        return None


def second_method(cfg: SweepConfig, train: TrainConfig) -> str | None:
    """The bound of the winners' second set of test certificates (``--cert-method``), or None
    where it is the trial's own (``cert_method``, IBP unless fixed otherwise)."""
    return None if cfg.test_cert_method == train.cert_method else cfg.test_cert_method


def second_keys(method: str, figures: dict[str, Any]) -> dict[str, float]:
    """test_acr_<method>, test_acr_norm_<method>, test_acr_uncapped_<method> and
    test_cert_acc_<method>@<eps> from ``trainers.certify.evaluate``'s figures. The names keep
    ``test_acr`` and ``test_cert_acc@<eps>`` meaning what they meant: the trials' own bound."""
    out = {
        f"{M.TEST_ACR}_{method}": figures[M.ACR],
        f"{M.TEST_ACR_NORM}_{method}": figures[M.ACR_NORM],
        f"{M.TEST_ACR_UNCAPPED}_{method}": figures[M.ACR_UNCAPPED],
    }
    out.update({f"test_{M.CERT_ACC}_{method}@{e}": v for e, v in figures[M.CERT_ACC].items()})
    return out


def evaluate_checkpoint(
    checkpoint: Any, train: TrainConfig, device: str, second: str | None = None
) -> dict[str, float]:
    """Test-set clean accuracy, ACR and certified accuracy of a trial's checkpoint, with the
    trial's thread count (restored afterwards: it may run in the driver); with ``second``, the
    figures of that bound method too (``second_keys``)."""
    import torch

    from trainers.certify import evaluate_on
    from trainers.models import load_model, pick_device

    with checkpoint.as_directory() as d:
        model, meta = load_model(Path(d) / "model.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(train.threads or threads)
    try:
        splits = train.load_splits(train_subset=None)  # the whole test split, whatever the training subset
        n = train.test_samples or splits.x_test.shape[0]
        spec, dev = splits.spec, pick_device(device)
        res = evaluate_on(
            spec,
            model.to(dev),
            splits.x_test[:n],
            splits.y_test[:n],
            method=train.cert_method,
            rel_tol=train.cert_rel_tol,
            device=dev,
        )
        extra = {}
        if second is not None:
            other = evaluate_on(
                spec,
                model,
                splits.x_test[:n],
                splits.y_test[:n],
                method=second,
                rel_tol=train.cert_rel_tol,
                device=dev,
            )
            extra = second_keys(second, other)
    finally:
        torch.set_num_threads(threads)
    out = {
        M.TEST_ACC: res["clean_acc"],
        M.TEST_ACR: res[M.ACR],
        M.TEST_ACR_NORM: res[M.ACR_NORM],
        M.TEST_ACR_UNCAPPED: res[M.ACR_UNCAPPED],
        "test_n": float(n),
        M.EPOCH: float(meta.get("epoch", 0)),
    }
    out.update({M.cert_acc_key(e): v for e, v in res[M.CERT_ACC].items()})
    return {**out, **extra}


def local_eval_threads(cfg: SweepConfig) -> int:
    """Torch threads of an evaluation in a local driver: those of ``--max-concurrent`` trials,
    at most the machine's CPUs."""
    import os

    return max(1, min(os.cpu_count() or 1, cfg.max_concurrent * cfg.trial_threads))


def evaluate_winners(cfg: SweepConfig, winners: dict[str, tuple[Any, dict]]) -> dict[str, dict[str, float]]:
    """trial id -> test figures, for every winner (trial id -> (checkpoint, trial config)) not
    already in the sweep's cache. Each winner is evaluated with its trial's TrainConfig.

    With local Ray the driver evaluates them itself: it has torch, the trainers, the data and
    the trials' devices already (a Ray task would first start a process and import them all).
    It evaluates one after the other with the threads of all the trials the sweep ran at once
    (``local_eval_threads``): the search is over, and those CPUs would idle otherwise. On a
    cluster each is a Ray task with a trial's resources, e.g. a GPU, wherever the checkpoint
    lives."""
    import ray

    cache_uri = f"{cfg.sweep_dir}/{TEST_CACHE}"
    cache = json.loads(read_text(cache_uri) or "{}")
    second = {t: second_method(cfg, cfg.trial(config)) for t, (_, config) in winners.items()}
    # an entry made before (or with another) --cert-method lacks this one's figures: redone
    todo = {
        t: w
        for t, w in winners.items()
        if t not in cache or (second[t] is not None and f"{M.TEST_ACR}_{second[t]}" not in cache[t])
    }
    if todo and cfg.address is None:
        threads = local_eval_threads(cfg)
        for t, (ck, config) in todo.items():
            train = cfg.trial(config).replace(threads=threads)
            cache[t] = evaluate_checkpoint(ck, train, cfg.device, second[t])
            write_text(cache_uri, json.dumps(cache, indent=2))  # nothing computed is lost
    elif todo:
        task = ray.remote(num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial)(evaluate_checkpoint)
        refs = {
            t: task.remote(ck, cfg.trial(config), cfg.device, second[t]) for t, (ck, config) in todo.items()
        }
        for t, ref in refs.items():
            cache[t] = ray.get(ref)
            write_text(cache_uri, json.dumps(cache, indent=2))  # nothing computed is lost
    return {t: cache[t] for t in winners}


def search_winner(method: str, target: float, pool: list[TrialPoint]) -> TrialPoint | None:
    """A target's winner among a method's trials with a checkpoint (``pool``): the search's pick."""
    return select_winner(pool, target)


def winners_of(cfg: SweepConfig, results: dict[str, MethodResults], pick: Any = search_winner):
    """(method, target) -> the trial its frontier row reports (None: infeasible); ``pick`` is
    ``search_winner`` or the confirm stage's ``ConfirmOutcome.winner``."""
    out = {}
    for method, res in results.items():
        pool = [p for p in res.points if p.trial_id in res.checkpoints]
        for target in cfg.accs:
            out[(method, target)] = pick(method, target, pool)
    return out


def frontier_rows(
    cfg: SweepConfig,
    results: dict[str, MethodResults],
    tests: dict[str, dict],
    run_ids: dict[str, str],
    pick: Any = search_winner,
) -> list[dict[str, Any]]:
    """One row per (method, target): the winner's validation and test figures, or 'infeasible'."""
    rows = []
    chosen = winners_of(cfg, results, pick)
    searched = chosen if pick is search_winner else winners_of(cfg, results)
    for method, res in results.items():
        for target in cfg.accs:
            w = chosen[(method, target)]
            row: dict[str, Any] = {
                "dataset": cfg.dataset,
                "method": method,
                "target": target,
                "protocol": cfg.protocol,
            }
            if w is None:
                row.update(status="infeasible", trials=len(res.points))
                rows.append(row)
                continue
            tuned = {k: v for k, v in w.config.items() if k not in TRIAL_META_KEYS}
            row.update(
                status="ok",
                trial_id=w.trial_id,
                run_id=run_ids.get(w.trial_id, ""),
                val_acc=w.val_acc,
                val_acr=w.val_acr,
                **tests[w.trial_id],
                config=tuned,
                trials=len(res.points),
                registered_model=f"{method}-{cfg.dataset}-acc{format_target(target)}",
            )
            # the epoch its figures are of (its full budget: stopped trials never win)
            if w.epoch is not None:
                row[M.EPOCH] = w.epoch
            first = searched[(method, target)]
            if first is not None and first.trial_id != w.trial_id:
                row["search_winner_trial_id"] = first.trial_id  # replaced by a confirmed candidate
            rows.append(row)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in r.items()})
    return buf.getvalue()


def format_table(rows: list[dict[str, Any]]) -> str:
    """The frontier as a terminal table (test figures; validation accuracy for reference)."""
    certs = sorted({k for r in rows for k in r if M.is_cert_acc(k)}, key=M.cert_eps_of)
    # the second bound's ACR and certified accuracies (--cert-method) beside the trials' own
    acr2 = sorted({k for r in rows for k in r if k.startswith(f"{M.TEST_ACR}_") and not _is_acr_variant(k)})
    certs2 = sorted(
        {k for r in rows for k in r if k.startswith(f"test_{M.CERT_ACC}_")},
        key=lambda k: (M.cert_eps_of(k), k),
    )
    head = [
        "dataset",
        "method",
        "target",
        "status",
        M.VAL_ACC,
        M.TEST_ACC,
        M.TEST_ACR,
        *certs,
        *acr2,
        *certs2,
    ]
    head += [M.EPOCH, "protocol", "trial_id"]
    lines = [head]
    for r in rows:
        lines.append([_fmt(r.get(k, "")) for k in head])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines)


def _is_acr_variant(key: str) -> bool:
    """test_acr_norm[_m] and test_acr_uncapped[_m]: not shown in the table."""
    return key.startswith((M.TEST_ACR_NORM, M.TEST_ACR_UNCAPPED))


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def register_winners(
    cfg: SweepConfig, rows: list[dict[str, Any]], results: dict[str, MethodResults], tracker: Any
) -> None:
    """Log each winner with mlflow.pytorch on the parent run and register it, once per sweep.

    The model goes with a copy of ``trainers`` (it loads where the project is not installed)
    and with a real input example: the first validation sample of the data it was trained on
    (``orchestrator.tracking.models``).
    """
    import sys

    from orchestrator.tracking.models import input_example, register_winner
    from trainers.data import DataMissingError
    from trainers.models import load_model

    for row in rows:
        if row["status"] != "ok":
            continue
        name = row["registered_model"]
        checkpoint = results[row["method"]].checkpoints[row["trial_id"]]

        def load(checkpoint=checkpoint, name=name):
            with checkpoint.as_directory() as d:
                model, meta = load_model(Path(d) / "model.pt")
            try:
                return model, input_example(meta["config"])
            except DataMissingError as e:  # the driver may lack the data the workers had
                print(f"[register] {name}: logged without an input example: {e}", file=sys.stderr)
                return model, None

        # logged-model names may not contain '.': acc0.7 -> acc0_7
        artifact = f"model-{row['method']}-acc{format_target(row['target'])}".replace(".", "_")
        row["model_uri"] = register_winner(
            tracker, name=name, artifact=artifact, load=load, kill_point=kill_point
        )


def publish_frontier(
    cfg: SweepConfig, results: dict[str, MethodResults], tracker: Any, confirmed: Any = None
) -> list[dict[str, Any]]:
    """Test-evaluate the winners and write frontier.{csv,json,png,html} to the parent run;
    ``confirmed`` (the confirm stage's ``ConfirmOutcome``, None when it is off) picks each
    row's trial and adds the stage's fields before they are written."""
    pick = confirmed.winner if confirmed is not None else search_winner
    winners = {
        w.trial_id: (results[m].checkpoints[w.trial_id], w.config)
        for (m, _), w in winners_of(cfg, results, pick).items()
        if w is not None
    }
    tests = evaluate_winners(cfg, winners)
    # The rows name each winner's MLflow run and registered model: the record must be complete.
    tracker.require_server(cfg.tracking_wait, "publishing the frontier")
    try:
        rows = _record_frontier(cfg, results, tests, tracker, confirmed)
    except Exception as e:
        from orchestrator.tracking.server import TrackingUnavailable, is_unavailable

        if is_unavailable(e):
            raise TrackingUnavailable(
                f"MLflow at {tracker.tracking_uri} went away while publishing: {e}"
            ) from e
        raise
    return rows


def _record_frontier(
    cfg: SweepConfig,
    results: dict[str, MethodResults],
    tests: dict[str, dict],
    tracker: Any,
    confirmed: Any = None,
) -> list[dict[str, Any]]:
    from orchestrator.plots import Panel, write_html, write_png

    run_ids = {p.trial_id: tracker.trial_run_id(p.trial_id) for r in results.values() for p in r.points}
    if confirmed is None:
        rows = frontier_rows(cfg, results, tests, run_ids)
    else:
        rows = confirmed.extend_rows(frontier_rows(cfg, results, tests, run_ids, confirmed.winner))
    if cfg.register_models:
        register_winners(cfg, rows, results, tracker)
    for row in rows:  # the winner's child run says what it won and how it did on test
        if row["status"] == "ok" and row["run_id"]:
            tracker.log_winner(
                row["trial_id"],
                f"winner.acc{format_target(row['target'])}",
                {f"winner_{k}".replace("@", "_at_"): v for k, v in tests[row["trial_id"]].items()},
            )
    kill_point("before-frontier-files")
    panel = Panel(cfg.dataset, {m: r.points for m, r in results.items()}, rows, cfg.accs)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "frontier.csv").write_text(rows_to_csv(rows))
        (out / "frontier.json").write_text(json.dumps(rows, indent=2, default=str))
        write_png([panel], out / "frontier.png")
        write_html([panel], out / "frontier.html")
        for f in sorted(out.iterdir()):
            tracker.log_artifact(f)
            if f.suffix != ".png":  # a copy next to the Ray results, for a look without MLflow
                write_text(f"{cfg.sweep_dir}/{f.name}", f.read_text())
        if not is_remote_uri(cfg.sweep_dir):
            shutil.copy(out / "frontier.png", Path(cfg.sweep_dir) / "frontier.png")
    return rows
