"""What a trial saves and when, what a reused trial process keeps, and how the sweep reads a
trial's results back (the parts of the trainable and the evaluation that need no Ray run)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from orchestrator.config import SweepConfig
from orchestrator.evaluation import checkpointed_metrics, collect_points
from orchestrator.sweep import unfinished_trials
from orchestrator.trainable import cached_splits


def sweep(**kw) -> SweepConfig:
    return SweepConfig(**{"dataset": "synthetic", "accs": (0.5,), "epochs": 12, "name": "t", **kw})


def test_checkpoints_every_n_epochs_and_at_every_asha_milestone():
    every3 = [e for e in range(1, 13) if sweep(checkpoint_every=3).checkpoint_due(e)]
    assert every3 == [1, 2, 3, 4, 6, 8, 9, 12]  # multiples of 3 and the milestones 1, 2, 4, 8
    grace2 = [e for e in range(1, 13) if sweep(checkpoint_every=5, grace_epochs=2).checkpoint_due(e)]
    assert grace2 == [2, 4, 5, 8, 10]
    plain = [e for e in range(1, 13) if sweep(checkpoint_every=5, scheduler="none").checkpoint_due(e)]
    assert plain == [5, 10]  # (the trainable also saves at a trial's last epoch)
    assert all(sweep().checkpoint_due(e) for e in range(1, 13))  # default: every epoch


def test_checkpoint_every_must_be_positive():
    with pytest.raises(Exception, match="--checkpoint-every"):
        sweep(checkpoint_every=0)


def result(rows, checkpoint=None, error=None, path="/x/train_trial_a"):
    df = pd.DataFrame(rows) if rows else None
    return SimpleNamespace(
        metrics=dict(rows[-1]) if rows else {},
        metrics_dataframe=df,
        checkpoint=SimpleNamespace(path=f"/x/{checkpoint}") if checkpoint else None,
        error=error,
        path=path,
        config={"method": "ibp"},
    )


def row(epoch, acc, acr, ckpt, **kw):
    return {
        "trial_id": "a",
        "epoch": epoch,
        "val_acc": acc,
        "val_acr": acr,
        "checkpoint_dir_name": ckpt,
        **kw,
    }


def test_a_trial_is_judged_at_its_latest_checkpoint():
    done = result(
        [row(1, 0.5, 0.1, "checkpoint_000000"), row(2, 0.6, 0.2, "checkpoint_000001")], "checkpoint_000001"
    )
    assert checkpointed_metrics(done)["epoch"] == 2
    # interrupted after epoch 3, whose report carried no checkpoint: the saved epoch 2 counts
    rows = [row(1, 0.5, 0.1, None), row(2, 0.6, 0.2, "checkpoint_000000"), row(3, 0.9, 0.3, None)]
    (p,) = collect_points([result(rows, "checkpoint_000000")], "ibp").points
    assert (p.val_acc, p.val_acr) == (0.6, 0.2)
    # a checkpoint that matches no reported epoch: not measured, so never a winner
    assert checkpointed_metrics(result(rows[:1], "checkpoint_000007")) == {}


def test_unfinished_trials_are_neither_done_nor_failed():
    grid = [
        result([row(3, 0.6, 0.2, "c", done=True)], path="/x/finished"),
        result([row(1, 0.6, 0.2, "c", done=False)], path="/x/interrupted"),
        result([row(1, 0.6, 0.2, "c")], error=RuntimeError("boom"), path="/x/failed"),
        result([], path="/x/pending"),
    ]
    assert unfinished_trials(grid) == ["interrupted", "pending"]


def test_a_reused_trial_process_keeps_one_loaded_data_set(tmp_path):
    base = sweep(data_dir=str(tmp_path), synthetic_size=256)
    first = cached_splits(base.trial({"method": "ibp", "lr": 1e-3}))
    assert cached_splits(base.trial({"method": "ibp", "lr": 5e-3})) is first  # other tuned values
    other = cached_splits(base.replace(synthetic_size=128).trial({"method": "ibp"}))
    assert other is not first and other.x_train.shape[0] < first.x_train.shape[0]
    assert cached_splits(base.trial({"method": "ibp"})) is not first  # one data set kept at a time
