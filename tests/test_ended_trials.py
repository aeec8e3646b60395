"""Trials that end on their own (diverged, or no epoch within --trial-timeout), without Ray: the
training thread that lets a trial wait for its epochs with a deadline, the last result such a
trial reports, and how the scheduler and the searcher take it. The whole path through Tune is in
tests/test_sweep_trials.py."""

from __future__ import annotations

import pytest

from orchestrator.scheduler import PenalisedASHA
from orchestrator.searcher import FAILED, classify
from orchestrator.trainable import TrainingThread, TrialTimedOut, ended_result, finished_epochs
from trainers import metrics as M
from trainers.config import TrainConfig
from trainers.train import DivergedError, run_training

QUICK = dict(
    dataset="synthetic", synthetic_size=256, std_epochs=0, ramp_epochs=1, threads=1, val_acr_samples=20
)


@pytest.fixture
def faulty():
    """tests/faulty_methods.py, imported when a test runs: importing it registers a method whose
    step blocks forever, which the contract suites (parametrized at collection) must not see."""
    import tests.faulty_methods

    return tests.faulty_methods


def test_a_training_that_never_reports_an_epoch_times_out(tmp_path, faulty):
    training = TrainingThread(TrainConfig(method=faulty.HUNG, epochs=2, **QUICK), tmp_path)
    with pytest.raises(TrialTimedOut, match=r"^no epoch reported for 0\.2 s$"):
        next(training.epochs(0.2))  # it blocks in its first step, forever
    training.abandon()
    assert training.abandoned.is_set() and training.thread.daemon  # it cannot keep Ray's worker alive


def test_epochs_come_one_at_a_time_and_the_training_error_is_raised(tmp_path, faulty):
    training = TrainingThread(TrainConfig(method=faulty.NAN, epochs=3, **QUICK), tmp_path)
    epochs = training.epochs(0)
    metrics, out = next(epochs)
    assert metrics[M.EPOCH] == 1 and out == tmp_path and (out / "state.pt").is_file()
    with pytest.raises(DivergedError, match="loss is nan"):
        next(epochs)  # epoch 2: its loss is NaN
    training.thread.join()


def test_a_stopped_trial_s_thread_ends_at_its_next_step(tmp_path):
    training = TrainingThread(TrainConfig(method="ibp", epochs=3, **QUICK), tmp_path)
    next(training.epochs(0))
    training.abandon()  # Tune stopped the trial after its first epoch
    training.thread.join()
    assert finished_epochs(tmp_path) == 1


def test_the_last_result_of_an_ended_trial(tmp_path):
    assert ended_result(2, M.DIVERGED, "diverged: loss is nan") == {
        M.EPOCH: 3,
        M.VAL_ACC: 0.0,
        M.VAL_ACR: 0.0,
        M.DIVERGED: 1,
        M.END_REASON: "diverged: loss is nan",
        M.DONE: True,
    }
    assert finished_epochs(tmp_path) == 0  # no checkpoint restored
    run_training(TrainConfig(method="ibp", epochs=2, **QUICK), output_dir=tmp_path, log=lambda _: None)
    assert finished_epochs(tmp_path) == 2


@pytest.mark.parametrize("flag", M.ENDED)
def test_an_ended_trial_is_failed_for_the_searcher_and_not_ranked_by_the_scheduler(flag):
    result = ended_result(1, flag, "why")
    assert classify(result, error=False, epochs=4) == (FAILED, None, None)
    asha = PenalisedASHA(max_epochs=4, grace_epochs=1, ref_eps=0.1, penalty=10.0, targets=(0.5,))
    trial = type("Trial", (), {"trial_id": "t1", "config": {"target": 0.5}})()
    asha.on_trial_complete(None, trial, result)
    assert asha.cutoff(0.5, 2) is None  # the rung at epoch 2 stays empty: nobody's cut-off moves
    asha.on_trial_complete(None, trial, {**result, flag: 0})  # the same figures, not ended
    assert asha.cutoff(0.5, 2) is not None
