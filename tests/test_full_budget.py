"""Only trials that trained their full epoch budget win a target (issue #21): a trial the
scheduler stopped early is read back with the epoch of its checkpoint and loses to any
full-budget one, in the frontier and in the live progress line; the frontier names the epoch."""

import io
from types import SimpleNamespace

import pandas as pd

from orchestrator.callbacks import ProgressCallback, trial_point
from orchestrator.config import SweepConfig
from orchestrator.evaluation import collect_points, format_table, frontier_rows


def result(trial_id, rows, config):
    """A Ray Tune result whose latest checkpoint is of its last reported epoch."""
    rows = [{"trial_id": trial_id, "checkpoint_dir_name": f"ck{r['epoch']}", **r} for r in rows]
    return SimpleNamespace(
        metrics=dict(rows[-1]),
        metrics_dataframe=pd.DataFrame(rows),
        checkpoint=SimpleNamespace(path=f"/x/{trial_id}/ck{rows[-1]['epoch']}"),
        error=None,
        path=f"/x/{trial_id}",
        config=config,
    )


def epochs(n, acc, acr):
    return [{"epoch": e, "val_acc": acc, "val_acr": acr} for e in range(1, n + 1)]


def test_a_stopped_trial_with_the_best_acr_never_wins_and_the_frontier_names_the_epoch():
    cfg = SweepConfig(dataset="synthetic", accs=(0.6,), epochs=4, name="t", protocol="paper")
    grid = [
        result("stopped", epochs(1, 0.9, 0.5), {"method": "ibp", "epochs": 4}),  # ASHA stopped it
        result("full", epochs(4, 0.7, 0.1), {"method": "ibp", "epochs": 4}),
        result("plugin", epochs(2, 0.8, 0.4), {"method": "ibp"}),  # budget: the sweep's 4 epochs
    ]
    res = collect_points(grid, "ibp", cfg.epochs)
    by_id = {p.trial_id: p for p in res.points}
    assert [(by_id[t].epoch, by_id[t].budget) for t in ("stopped", "full", "plugin")] == [
        (1, 4),
        (4, 4),
        (2, 4),
    ]
    tests = {"full": {"test_acc": 0.69, "test_acr": 0.09, "epoch": 4.0}}
    (row,) = frontier_rows(cfg, {"ibp": res}, tests, {})
    assert row["trial_id"] == "full" and row["epoch"] == 4 and row["protocol"] == "paper"
    table = format_table([row])
    assert "epoch" in table.splitlines()[0] and "paper" in table.splitlines()[1]
    # without a full-budget trial the target has no winner, however good the stopped ones are
    (none,) = frontier_rows(cfg, {"ibp": collect_points(grid[:1], "ibp", cfg.epochs)}, {}, {})
    assert none["status"] == "infeasible"


def fake_trial(trial_id, epoch, acr, config):
    return SimpleNamespace(
        trial_id=trial_id,
        status="TERMINATED",
        config=config,
        last_result={"epoch": epoch, "val_acc": 0.9, "val_acr": acr},
    )


def test_the_live_progress_line_counts_only_full_budget_trials():
    stopped = fake_trial("stop1", 1, 0.5, {"epochs": 3})
    full = fake_trial("full1", 3, 0.2, {})
    assert not trial_point(stopped, "ibp", 3).full_budget and trial_point(full, "ibp", 3).full_budget
    out = io.StringIO()
    cb = ProgressCallback("ibp", (0.8,), stream=out, epochs=3)
    cb.on_trial_complete(0, [stopped], stopped)
    assert "stopped at epoch 1: cannot win" in out.getvalue() and "0.8: -" in out.getvalue()
    cb.on_trial_complete(0, [stopped, full], full)
    assert out.getvalue().splitlines()[-1].endswith("0.8: 0.2000 (full1)")
