"""A gate that trials wait at, so that a test can act while a trial is provably mid-epoch.

The gate is a folder shared by the test and the trials (named by ``$ACERT_TEST_GATE`` in the
trials' environment; on a cluster rehearsal every "pod" runs on this machine, so one folder is
seen by all). The trial side (:func:`pass_or_wait`, called by ``tests.gated_method`` before a
training run's first step) follows three files:

- ``pass``: the first training run to reach the gate creates it (``O_EXCL``: exactly one run
  can) and goes through, so that the sweep has a finished trial;
- ``waiting-<trial>``: every other run writes it, then waits for ``open``, polling the folder.
  Its epoch has begun (the model is built, the data loaded, the first batch drawn) and none of
  its steps has run: whatever the test does now happens mid-epoch, however fast or slow the
  machine is;
- ``open``: created by the test (:meth:`Gate.open`); from then on every run goes through.

A run that has waited ``MAX_WAIT_S`` without the gate opening raises :class:`GateTimeout`, so a
test that fails before opening it never leaves trials blocked forever; tests also open the gate
on teardown. No sleep decides an outcome: the test waits for files, and trials for a file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

ENV = "ACERT_TEST_GATE"
# The method of tests/gated_method.py, named here so that a test can refer to it without importing
# that module (importing it registers the method, and at collection time the contract suites
# would then train it, which needs a gate).
GATED_METHOD = "gated-acert"
PASS, OPEN, WAITING = "pass", "open", "waiting-"
MAX_WAIT_S = 600.0
POLL_S = 0.1


class GateTimeout(RuntimeError):
    """The gate stayed closed for ``MAX_WAIT_S``: the test that owns it failed or forgot it."""


class Gate:
    """The test's side of the gate in ``folder`` (created here)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        """What the trials' processes need in their environment to find this gate."""
        return {ENV: str(self.folder)}

    def waiting(self) -> list[str]:
        """The trials waiting at the gate now or before it opened (one marker per trial)."""
        return sorted(p.name.removeprefix(WAITING) for p in self.folder.glob(f"{WAITING}*"))

    def passed(self) -> str | None:
        """The trial that went through while the gate was closed, if any has yet."""
        try:
            return (self.folder / PASS).read_text() or None
        except FileNotFoundError:
            return None

    def wait_for_waiting(
        self, n: int = 1, timeout_s: float = MAX_WAIT_S, why: Callable[[], str] | None = None
    ) -> list[str]:
        """Block until at least ``n`` trials wait at the gate; returns their names. Raises
        TimeoutError (with ``why()``) if they do not within ``timeout_s`` (a failed sweep)."""
        deadline = time.monotonic() + timeout_s
        while len(names := self.waiting()) < n:
            if time.monotonic() > deadline:
                detail = why() if why else ""
                raise TimeoutError(f"{n} trial(s) waiting at {self.folder}: only {names}. {detail}")
            time.sleep(POLL_S)
        return names

    def open(self) -> None:
        """Let every waiting and future trial through (idempotent)."""
        (self.folder / OPEN).touch()

    def is_open(self) -> bool:
        return (self.folder / OPEN).exists()


def pass_or_wait(who: str, folder: str | None = None) -> bool:
    """The trial's side: go through if the gate is open or this is the first run to reach it;
    else mark ``who`` waiting and block until the gate opens. Returns whether it waited."""
    folder = folder or os.environ.get(ENV)
    if not folder:
        raise RuntimeError(f"the gated method needs ${ENV} (the gate's folder) in the trial's environment")
    gate = Path(folder)
    if (gate / OPEN).exists():
        return False
    try:
        fd = os.open(gate / PASS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(who)
        return False
    (gate / f"{WAITING}{who}").touch()
    deadline = time.monotonic() + MAX_WAIT_S
    while not (gate / OPEN).exists():
        if time.monotonic() > deadline:
            raise GateTimeout(f"trial {who}: the gate {gate} stayed closed for {MAX_WAIT_S:.0f} s")
        time.sleep(POLL_S)
    return True
