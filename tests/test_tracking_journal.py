"""The write-ahead journal of the MLflow record: entries kept while the server is away, replayed
in order and exactly once when it is back, also by a driver that was killed in between.

A stand-in store (a list, and a switch for "server down") shows the ordering and the backoff;
the real store on a SQLite tracking database shows that re-applying the entry a killed driver
applied without moving its cursor changes nothing.
"""

import json

import pytest

from orchestrator.tracking import SweepTracker
from orchestrator.tracking.journal import APPLIED, JOURNAL, Journal
from orchestrator.tracking.server import is_unavailable


class FlakyStore:
    """Applies entries to a list; raises ConnectionRefusedError while ``up`` is False, and a
    refusal (ValueError) for entries whose op is in ``refuse``."""

    def __init__(self):
        self.up, self.applied, self.calls, self.refuse = True, [], 0, set()

    def apply(self, entry):
        self.calls += 1
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        if entry["op"] in self.refuse:
            raise ValueError("INVALID_PARAMETER_VALUE: bad entry")
        self.applied.append(entry["seq"])

    def last_step(self, run, key):
        raise ConnectionRefusedError("connection refused")


def tracker_on(folder, store, lines=None):
    say = (lines if lines is not None else []).append
    return SweepTracker("http://nowhere", "synthetic", "j", "id1", folder, store=store, say=say)


def test_entries_wait_while_the_server_is_away_and_replay_in_order_once(tmp_path):
    store, lines = FlakyStore(), []
    t = tracker_on(tmp_path, store, lines)
    t.start({"trials": 3})
    t.trial("a", "acert", {"lr": 0.1})
    assert store.applied == [0, 1, 2] and t.pending == 0
    store.up = False
    t.log_trial_metrics("a", {"val_acr": 0.1}, step=1)
    calls = store.calls
    t.log_trial_metrics("a", {"val_acr": 0.2}, step=2)  # within the backoff: the server is not asked
    t.end_trial("a", status="FINISHED", targets=[0.5])
    assert store.calls == calls and t.pending == 4
    assert len(lines) == 1 and "unreachable" in lines[0] and str(tmp_path / JOURNAL) in lines[0]
    assert t.last_step("a", "val_acr") == 2  # answered by the journal, no server needed
    store.up = True
    assert t.flush(wait_s=30)
    assert store.applied == list(range(7)) and t.pending == 0
    assert "back after" in lines[-1] and "4 journal entries replayed" in lines[-1]
    assert not t.flush() or store.applied == list(range(7))  # nothing twice


def test_a_driver_killed_during_an_outage_replays_the_journal_once(tmp_path):
    store = FlakyStore()
    t = tracker_on(tmp_path, store)
    t.start({})
    store.up = False
    t.trial("a", "ibp", {})
    t.log_trial_metrics("a", {"val_acr": 0.3}, step=1)
    del t  # the driver is killed: nothing but the files remain

    store.up = True
    again = tracker_on(tmp_path, store)
    assert again.pending == 2 and again.has_trial("a") and again.last_step("a", "val_acr") == 1
    assert again.flush()
    assert store.applied == [0, 1, 2, 3]
    third = tracker_on(tmp_path, store)
    assert third.pending == 0 and third.flush() and store.applied == [0, 1, 2, 3]


def test_a_refused_entry_is_skipped_and_said_the_rest_goes_on(tmp_path):
    store, lines = FlakyStore(), []
    store.refuse = {"tags"}
    t = tracker_on(tmp_path, store, lines)
    t.start({})
    t.trial("a", "ibp", {})
    t.end_trial("a", status="FAILED", reason="boom")  # a tags entry, then a status entry
    assert t.pending == 0 and store.applied == [0, 1, 2, 4]
    assert any("refused by MLflow, skipped" in line and "INVALID_PARAMETER_VALUE" in line for line in lines)


def test_an_entry_cut_short_by_a_kill_is_dropped_and_a_corrupt_journal_is_an_error(tmp_path):
    j = Journal(tmp_path)
    j.append({"op": "parent"})
    with (tmp_path / JOURNAL).open("a") as f:
        f.write('{"seq": 1, "op": "tra')  # the process died in the middle of this write
    assert len(Journal(tmp_path).entries) == 1
    assert (tmp_path / JOURNAL).read_text().count("\n") == 1
    (tmp_path / JOURNAL).write_text('{"seq": 0, "op": "parent"}\nnot json\n{"seq": 2, "op": "x"}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        Journal(tmp_path)


def test_replaying_the_entry_a_killed_driver_applied_does_not_log_it_twice(tmp_path):
    """The cursor moves after an entry is applied: a kill in between applies it again on resume.
    Against a real tracking store, the record is the same."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    journal = tmp_path / "journal"
    t = SweepTracker(uri, "synthetic", "dup", "id-dup", journal)
    t.start({"trials": 2})
    t.trial("a", "acert", {"lr": 0.01})
    t.log_trial_metrics("a", {"val_acr": 0.25, "val_acc": 0.5}, step=1)
    t.end_trial("a", status="FINISHED", targets=[0.5])
    t.log_artifact(_file(tmp_path / "frontier.json", "[]"))
    n = len(Journal(journal).entries)
    for back in range(1, n + 1):  # the kill may fall after any entry
        (journal / APPLIED).write_text(str(n - back))
        again = SweepTracker(uri, "synthetic", "dup", "id-dup", journal)
        assert again.flush() and again.pending == 0
        c = MlflowClient(tracking_uri=uri)
        runs = c.search_runs([again.experiment_id], "", max_results=10)
        assert sorted(r.data.tags["sweep.role"] for r in runs) == ["parent", "trial"]
        trial = next(r for r in runs if r.data.tags["sweep.role"] == "trial")
        hist = [(m.step, m.value) for m in c.get_metric_history(trial.info.run_id, "val_acr")]
        assert hist == [(1, 0.25)], (back, hist)
        assert trial.info.status == "FINISHED" and trial.data.params["lr"] == "0.01"
        parent = next(r for r in runs if r.data.tags["sweep.role"] == "parent")
        assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["frontier.json"]


def test_runs_carry_the_sweep_id_and_a_new_sweep_of_an_old_name_gets_its_own(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = SweepTracker(uri, "synthetic", "same", "id-old", tmp_path / "old")
    old.start({})
    old.trial("t1", "ibp", {})
    new = SweepTracker(uri, "synthetic", "same", "id-new", tmp_path / "new")
    new.start({})
    new.trial("t1", "ibp", {})  # Ray reuses trial ids across experiments
    assert new.parent_run_id() != old.parent_run_id()
    assert new.trial_run_id("t1") != old.trial_run_id("t1")
    c = MlflowClient(tracking_uri=uri)
    assert c.get_run(new.trial_run_id("t1")).data.tags["sweep.id"] == "id-new"
    assert c.get_run(new.trial_run_id("t1")).data.tags["mlflow.parentRunId"] == new.parent_run_id()
    assert new.close_unrecorded("ibp", set()) == 1
    assert c.get_run(old.trial_run_id("t1")).info.status == "RUNNING"  # the old sweep's run is not touched


def test_which_errors_mean_the_server_is_away():
    from mlflow.exceptions import MlflowException, RestException

    assert is_unavailable(ConnectionRefusedError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(
        MlflowException("API request to http://x failed with exception Max retries exceeded")
    )
    assert is_unavailable(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert not is_unavailable(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}))
    assert not is_unavailable(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}))
    assert not is_unavailable(ValueError("a bug"))


def _file(path, text):
    path.write_text(text)
    return path


def test_the_journal_is_json_lines_a_user_can_read(tmp_path):
    t = tracker_on(tmp_path, FlakyStore())
    t.start({"trials": 1})
    entries = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]
    assert [e["op"] for e in entries] == ["parent", "status"] and entries[0]["params"] == {"trials": 1}
    assert (tmp_path / APPLIED).read_text() == "2"
