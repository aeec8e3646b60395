"""``SweepTracker``: the sweep's MLflow record, written through the journal.

Writes are appended to the journal and then replayed to the server in order (:meth:`flush`).
While the server is away, a flush gives up at the first entry that fails with an "away" error
(:func:`~orchestrator.tracking.server.is_unavailable`) and is not tried again before a backoff
(5 s, doubling, at most 60 s) has passed: callbacks return at once, the trials go on training,
and the entries wait. Questions about the record (has this trial a run, its last logged epoch)
are answered from the journal, so they need no server either. Only the closing stage of a sweep
(test evaluation results, registered models) needs the server, and waits for it
(``flush(wait_s=...)``).

Ray pickles the callbacks that hold a tracker into the experiment folder; unpickled in a
driver that has a live tracker of the same sweep (``Tuner.restore``), they get that tracker, so
one process writes one journal.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.tracking.journal import Journal
from orchestrator.tracking.names import (
    TAG_ENDED,
    TAG_REASON,
    TAG_STOPPED_EARLY,
    TAG_TARGETS,
    metric_key,
)
from orchestrator.tracking.server import TrackingUnavailable, is_unavailable
from orchestrator.tracking.store import MlflowStore, git_commit, package_versions

BACKOFF_S = (5.0, 60.0)  # first and longest pause between replays while the server is away

_LIVE: dict[str, SweepTracker] = {}  # sweep name -> the tracker of this driver process


def _revive(state: dict[str, Any]) -> SweepTracker:
    live = _LIVE.get(state["sweep_name"])
    return live if live is not None else SweepTracker(**state)


class SweepTracker:
    """Get-or-create access to one sweep's parent and trial runs, through a journal in
    ``journal_dir`` (a fresh temporary folder if None)."""

    def __init__(
        self,
        tracking_uri: str,
        dataset: str,
        sweep_name: str,
        sweep_id: str = "",
        journal_dir: str | Path | None = None,
        *,
        store: Any = None,
        say: Any = None,
    ) -> None:
        self.tracking_uri, self.dataset, self.sweep_name, self.sweep_id = (
            tracking_uri,
            dataset,
            sweep_name,
            sweep_id,
        )
        self.journal_dir = str(journal_dir or tempfile.mkdtemp(prefix="acert-journal-"))
        self.journal = Journal(self.journal_dir)
        self.store = store or MlflowStore(tracking_uri, dataset, sweep_name, sweep_id)
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self._retry_at = 0.0
        self._pause = BACKOFF_S[0]
        self._away_since: float | None = None

    def __reduce__(self):
        state = {
            "tracking_uri": self.tracking_uri,
            "dataset": self.dataset,
            "sweep_name": self.sweep_name,
            "sweep_id": self.sweep_id,
            "journal_dir": self.journal_dir,
        }
        return _revive, (state,)

    def make_live(self) -> SweepTracker:
        """Make this the tracker that unpickled callbacks of the sweep use in this process."""
        _LIVE[self.sweep_name] = self
        return self

    # --- replay -------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self.journal.pending

    def flush(self, wait_s: float = 0.0) -> bool:
        """Apply the pending entries in order; True when none is left. With ``wait_s`` > 0,
        keep trying (with the backoff) up to that long while the server is away."""
        deadline = time.monotonic() + wait_s
        while True:
            if time.monotonic() >= self._retry_at or wait_s > 0:
                if self._replay():
                    return True
            if time.monotonic() + self._pause > deadline:
                return self.journal.pending == 0
            time.sleep(min(self._pause, max(0.0, deadline - time.monotonic())))

    def _replay(self) -> bool:
        applied = 0
        while (entry := self.journal.next_pending()) is not None:
            try:
                self.store.apply(entry)
            except Exception as e:  # noqa: BLE001 - sorted below: away, or a rejected entry
                if is_unavailable(e):
                    self._went_away(e)
                    return False
                self._say(
                    f"[tracking] entry {entry['seq']} ({entry['op']}) refused by MLflow, skipped: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                )
            self.journal.mark_applied()
            applied += 1
        if self._away_since is not None:
            gone = time.monotonic() - self._away_since
            self._say(f"[tracking] MLflow is back after {gone:.0f} s: {applied} journal entries replayed")
        self._away_since, self._pause, self._retry_at = None, BACKOFF_S[0], 0.0
        return True

    def _went_away(self, e: BaseException) -> None:
        if self._away_since is None:
            self._away_since = time.monotonic()
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            self._say(
                f"[tracking] MLflow at {self.tracking_uri} is unreachable ({why}); the sweep goes on and "
                f"its record waits in {self.journal.path} ({self.journal.pending} entries)"
            )
        else:
            self._pause = min(self._pause * 2, BACKOFF_S[1])
        self._retry_at = time.monotonic() + self._pause

    def _write(self, entry: dict[str, Any]) -> None:
        self.journal.append({**entry, "time_ms": int(time.time() * 1000)})
        self.flush()

    def require_server(self, wait_s: float, what: str) -> None:
        """Replay everything, waiting up to ``wait_s``; raise TrackingUnavailable if the server
        stays away (``what`` says what needs it)."""
        if not self.flush(wait_s=wait_s):
            raise TrackingUnavailable(
                f"MLflow at {self.tracking_uri} unreachable for {wait_s:g} s; {what} needs it "
                f"({self.journal.pending} record entries wait in {self.journal.path})"
            )

    # --- the record -------------------------------------------------------------------
    def start(self, params: dict[str, Any]) -> None:
        """The sweep's parent run (created with params, commit and versions on first use),
        marked RUNNING."""
        if not self.journal.state.parent:
            tags = {"git_commit": git_commit(), **{f"version.{k}": v for k, v in package_versions().items()}}
            self._write({"op": "parent", "params": params, "tags": tags})
        self._write({"op": "status", "run": "parent", "status": "RUNNING"})

    def finish(self, status: str = "FINISHED") -> None:
        self._write({"op": "status", "run": "parent", "status": status})

    @property
    def finished(self) -> bool:
        return self.journal.state.parent_status == "FINISHED"

    def has_trial(self, trial_id: str) -> bool:
        return trial_id in self.journal.state.trials

    def trial(self, trial_id: str, method: str, params: dict[str, Any]) -> None:
        """The trial's run (its params are the trial config), recorded once."""
        if not self.has_trial(trial_id):
            self._write({"op": "trial", "trial_id": trial_id, "method": method, "params": params})

    def last_step(self, trial_id: str, key: str) -> int:
        """The last epoch logged for a trial: from the journal; for a trial logged before this
        sweep kept a journal, from the server (-1 if that is away too)."""
        t = self.journal.state.trials.get(trial_id)
        if t is not None and t.last_step >= 0:
            return t.last_step
        try:
            return self.store.last_step(f"trial:{trial_id}", key)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, LookupError) or is_unavailable(e):
                return -1
            raise

    def log_trial_metrics(self, trial_id: str, metrics: dict[str, float], step: int) -> None:
        clean = {metric_key(k): float(v) for k, v in metrics.items() if abs(float(v)) != float("inf")}
        self._write({"op": "metrics", "run": f"trial:{trial_id}", "metrics": clean, "step": int(step)})

    def log_parent_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Step metrics of the parent run (the convergence of the search). A key already logged
        at this step or a later one is skipped: a driver resumed after a kill finishes again
        the trials Tune had not saved as finished, and counts them at steps it logged before."""
        logged = self.journal.state.parent_steps
        fresh = {
            metric_key(k): float(v)
            for k, v in metrics.items()
            if logged.get(metric_key(k), -1) < step and math.isfinite(float(v))
        }
        if fresh:
            self._write({"op": "metrics", "run": "parent", "metrics": fresh, "step": int(step)})

    def tag_trial(self, trial_id: str, tags: dict[str, str]) -> None:
        self._write({"op": "tags", "run": f"trial:{trial_id}", "tags": tags})

    def end_trial(
        self,
        trial_id: str,
        *,
        status: str,
        reason: str | None = None,
        targets: list[float] | None = None,
        stopped_early: bool | None = None,
        ended: str | None = None,
    ) -> None:
        tags = {}
        if ended:
            tags[TAG_ENDED] = ended
        if reason:
            tags[TAG_REASON] = reason[:5000]
        if targets is not None:
            tags[TAG_TARGETS] = ",".join(f"{t:g}" for t in targets) or "none"
        if stopped_early is not None:
            tags[TAG_STOPPED_EARLY] = str(stopped_early).lower()
        if tags:
            self.tag_trial(trial_id, tags)
        self._write({"op": "status", "run": f"trial:{trial_id}", "status": status})

    def close_unrecorded(self, method: str, known_trial_ids: set[str]) -> int:
        """Mark KILLED the runs of trials Ray does not know: started, then lost with a killed
        driver before Tune saved its state. Such a trial may even have finished (a short trial
        fits in Tune's save period): Ray ran a replacement, so its run is not part of the
        sweep's record whatever its status. Returns how many."""
        lost = [
            (trial_id, t.status)
            for trial_id, t in self.journal.state.trials.items()
            if t.method == method and t.status != "KILLED" and trial_id not in known_trial_ids
        ]
        for trial_id, status in lost:
            self.end_trial(
                trial_id,
                status="KILLED",
                reason=f"driver killed before Ray recorded this trial (it was {status})",
            )
        return len(lost)

    def log_winner(self, trial_id: str, target_tag: str, test_metrics: dict[str, float]) -> None:
        self.tag_trial(trial_id, {target_tag: "true"})
        self._write({"op": "metrics", "run": f"trial:{trial_id}", "metrics": test_metrics, "step": 0})

    def log_artifact(self, local_file: str | Path) -> None:
        """``local_file`` on the parent run; the journal keeps a copy until it is uploaded."""
        name = Path(local_file).name
        kept = self.journal.keep_file(local_file, name)
        self._write({"op": "artifact", "run": "parent", "file": kept, "name": name})

    # --- after a full replay: the server's ids --------------------------------------------
    def parent_run_id(self) -> str:
        return self.store.run_id("parent")

    def trial_run_id(self, trial_id: str) -> str:
        try:
            return self.store.run_id(f"trial:{trial_id}")
        except LookupError:
            return ""

    @property
    def client(self):
        return self.store.client

    @property
    def experiment_id(self) -> str:
        return self.store.experiment_id
