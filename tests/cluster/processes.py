"""Processes of the cluster rehearsal: started with a marker, found and killed by it.

Every process the rehearsal starts gets the environment variable ``ACERT_REHEARSAL_POD=<run>/<pod>``
(``<run>`` unique per test run, ``<pod>`` the pod it stands for: ``head-1``, ``worker-1``...),
and every process it forks inherits it: Ray's GCS, raylet, dashboard, workers, the job driver,
PostgreSQL's backends, MLflow's server workers. ``kill_marked`` finds them in ``/proc/*/environ``
whatever their command line (Ray renames its workers ``ray::...``) or parent (orphans are
reparented): killing a pod's marker kills every process of that "pod", as a node loss would,
and killing the run's marker at the end leaves nothing behind. Nothing else on the machine is
touched: ``ray stop`` is not used (it stops every Ray instance of the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "ACERT_REHEARSAL_POD"


def marked(prefix: str) -> list[int]:
    """PIDs of the processes whose ``ACERT_REHEARSAL_POD`` starts with ``prefix``."""
    needle = f"{MARKER}={prefix}".encode()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours
            continue
        if any(var.startswith(needle) for var in env.split(b"\0")):
            out.append(int(entry.name))
    return out


def kill_marked(prefix: str, timeout_s: float = 30.0) -> int:
    """SIGKILL every process marked ``prefix`` (repeatedly: one may fork while others die) and
    wait until none is left; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p in marked(prefix) if not _zombie(p)]
        if not pids:
            return len(killed)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"processes marked {prefix!r} survive SIGKILL: {marked(prefix)}")


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start(
    argv: list[str], *, env: dict[str, str], log: Path, user: str | None = None, cwd: Path | None = None
):
    """Start ``argv`` in its own session, stdout and stderr to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(what: str, ready: Callable[[], object], timeout_s: float, every_s: float = 1.0, why=None):
    """Poll ``ready()`` until it returns something true (returned); else fail with ``why()``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = why() if why else ""
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s. {detail}")
        time.sleep(every_s)


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


class LogWatch:
    """Lines of a growing log file, with the monotonic time each was first seen (polling)."""

    def __init__(self, path: Path) -> None:
        self.path, self.lines, self._offset = Path(path), [], 0

    def poll(self) -> list[tuple[float, str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.lines
        complete = chunk.rfind(b"\n") + 1
        now = time.monotonic()
        self._offset += complete
        self.lines += [(now, ln) for ln in chunk[:complete].decode(errors="replace").splitlines()]
        return self.lines

    def count(self, text: str) -> int:
        return sum(text in ln for _, ln in self.poll())

    def first(self, text: str) -> float | None:
        return next((t for t, ln in self.poll() if text in ln), None)


# --- PostgreSQL binaries ------------------------------------------------------------------------------
def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: the PATH's, else the newest Debian
    ``/usr/lib/postgresql/<version>/bin`` (Debian's package does not put them on the PATH)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()), None)


def ci_is_set() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_postgres() -> Path:
    """``postgres_bin_dir`` for tests: without it, fail under CI (``$CI`` set), skip elsewhere."""
    import pytest

    found = postgres_bin_dir()
    if found is None:
        reason = (
            "PostgreSQL's initdb/postgres are not installed (apt-get install postgresql; .ci/run does): "
            "the cluster rehearsal needs them"
        )
        if ci_is_set():
            pytest.fail(f"{reason}; CI is set, so it may not skip", pytrace=False)
        pytest.skip(reason)
    return found
