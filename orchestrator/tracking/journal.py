"""The write-ahead journal of a sweep's MLflow record.

Every write the driver makes to MLflow is first appended here, one JSON object per line, then
applied to the server in order. ``tracking.applied`` holds how many entries the server has; it is
written (atomically) after each entry is applied, so a driver killed at any moment resumes with
the entries the server has not seen yet. An entry applied just before such a kill, with the
cursor not yet moved, is applied again: every operation is idempotent on the server side
(``orchestrator.tracking.store``), which makes the whole record exactly-once.

The journal also answers, without a server, what the sweep has already recorded: which trials
have a run, the last epoch logged for each, which runs are closed. That is what lets the sweep
go on training while MLflow is down.

Files (in the sweep folder when it is local, see :func:`journal_dir`):

- ``tracking.journal``: the entries, oldest first; never rewritten;
- ``tracking.applied``: the number of entries the server has;
- ``tracking.files/``: copies of the artifacts that entries refer to (the originals are
  temporary files).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JOURNAL = "tracking.journal"
APPLIED = "tracking.applied"
FILES = "tracking.files"


def journal_dir(sweep_dir: str, sweep_id: str) -> Path:
    """The sweep folder when it is local (it survives the driver: on a cluster it is the
    shared volume); with remote storage (s3://...) a local folder, which survives a driver
    restart on the same machine only."""
    from orchestrator.config import is_remote_uri

    if not is_remote_uri(sweep_dir):
        return Path(sweep_dir.removeprefix("file://"))
    return Path(tempfile.gettempdir()) / f"acert-sweep-journal-{sweep_id or 'unnamed'}"


@dataclass
class TrialState:
    """What the journal says of one trial's run."""

    method: str
    last_step: int = -1
    status: str = "RUNNING"


@dataclass
class JournalState:
    """The record as the journal has it, rebuilt by reading the journal once."""

    parent: bool = False
    parent_status: str = ""
    trials: dict[str, TrialState] = field(default_factory=dict)
    parent_steps: dict[str, int] = field(default_factory=dict)  # parent metric -> last step logged

    def apply(self, entry: dict[str, Any]) -> None:
        op, run = entry["op"], entry.get("run", "")
        if op == "parent":
            self.parent = True
        elif op == "trial":
            self.trials.setdefault(entry["trial_id"], TrialState(entry["method"]))
        elif op == "metrics" and run.startswith("trial:"):
            t = self.trials.get(run.removeprefix("trial:"))
            if t is not None:
                t.last_step = max(t.last_step, int(entry["step"]))
        elif op == "metrics" and run == "parent":
            for key in entry["metrics"]:
                self.parent_steps[key] = max(self.parent_steps.get(key, -1), int(entry["step"]))
        elif op == "status":
            if run == "parent":
                self.parent_status = entry["status"]
            elif run.startswith("trial:") and run.removeprefix("trial:") in self.trials:
                self.trials[run.removeprefix("trial:")].status = entry["status"]


class Journal:
    """Append-only entries plus the applied cursor, in one folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / JOURNAL
        self.entries: list[dict[str, Any]] = []
        self.state = JournalState()
        if self.path.is_file():
            self._read()
        self.applied = self._read_applied()

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a kill in the middle of an append: that entry was never made
                    self._truncate_to(len(lines) - 1)
                    break
                raise ValueError(f"{self.path}: line {i + 1} is not JSON; the journal is corrupt") from None
            self.entries.append(entry)
            self.state.apply(entry)

    def _truncate_to(self, n_lines: int) -> None:
        kept = self.path.read_text().splitlines()[:n_lines]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def _read_applied(self) -> int:
        f = self.folder / APPLIED
        try:
            return min(int(f.read_text().strip() or 0), len(self.entries))
        except (OSError, ValueError):
            return 0

    @property
    def pending(self) -> int:
        return len(self.entries) - self.applied

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"seq": len(self.entries), **entry}
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
        self.entries.append(entry)
        self.state.apply(entry)
        return entry

    def keep_file(self, src: str | Path, name: str) -> str:
        """A copy of ``src`` that lives as long as the journal, for an artifact entry."""
        dest = self.folder / FILES / f"{len(self.entries)}-{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        return str(dest)

    def next_pending(self) -> dict[str, Any] | None:
        return self.entries[self.applied] if self.applied < len(self.entries) else None

    def mark_applied(self) -> None:
        self.applied += 1
        tmp = self.folder / (APPLIED + ".tmp")
        tmp.write_text(str(self.applied))
        os.replace(tmp, self.folder / APPLIED)
