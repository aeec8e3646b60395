"""The gate of the cluster rehearsal (tests/gate.py): one run through, the others held until it
opens, never held forever."""

from __future__ import annotations

import threading

import pytest

from tests import gate as g


def test_the_first_run_goes_through_the_others_wait_until_the_gate_opens(tmp_path):
    gate = g.Gate(tmp_path / "gate")
    assert g.pass_or_wait("t1", str(gate.folder)) is False
    assert gate.passed() == "t1" and gate.waiting() == []

    waited = {}
    second = threading.Thread(target=lambda: waited.update(t2=g.pass_or_wait("t2", str(gate.folder))))
    second.start()
    assert gate.wait_for_waiting(1, timeout_s=60) == ["t2"]
    assert second.is_alive(), "t2 went through a closed gate"
    gate.open()
    second.join(60)
    assert not second.is_alive() and waited == {"t2": True}
    assert g.pass_or_wait("t3", str(gate.folder)) is False  # open: nobody waits any more
    assert gate.waiting() == ["t2"] and gate.passed() == "t1"


def test_a_gate_left_closed_gives_up(tmp_path, monkeypatch):
    gate = g.Gate(tmp_path / "gate")
    g.pass_or_wait("t1", str(gate.folder))
    monkeypatch.setattr(g, "MAX_WAIT_S", 0.3)
    with pytest.raises(g.GateTimeout, match="t2"):
        g.pass_or_wait("t2", str(gate.folder))
    with pytest.raises(TimeoutError, match="2 trial"):
        gate.wait_for_waiting(2, timeout_s=0.3)


def test_without_the_gate_folder_the_run_fails(monkeypatch):
    monkeypatch.delenv(g.ENV, raising=False)
    with pytest.raises(RuntimeError, match=g.ENV):
        g.pass_or_wait("t1")
