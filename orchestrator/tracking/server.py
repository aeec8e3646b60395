"""The tracking server as a service that may be away: the startup check, the client's retry
window, and which errors mean "away" (keep the entry and try later) rather than "wrong"."""

from __future__ import annotations

import base64
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

# MLflow's client retries an HTTP call for about 4 minutes by default (7 retries, backoff
# factor 2), blocking the driver's event loop that long on every call during an outage. The
# journal keeps the record through an outage instead, so the client gives up sooner; each
# variable keeps a value the user set.
CLIENT_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def configure_client_retries() -> None:
    for k, v in CLIENT_RETRY_DEFAULTS.items():
        os.environ.setdefault(k, v)


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached within the time allowed."""


def is_unavailable(exc: BaseException) -> bool:
    """True for errors a server that is down, restarting or overloaded gives (connection
    refused, time-outs, HTTP 5xx and 429, a locked or lost database behind it); False for a
    request the server understood and refused (a bad parameter, a missing resource), which
    trying again would not change."""
    try:
        from mlflow.exceptions import MlflowException, RestException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return isinstance(exc, OSError)
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, RestException | MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status in (401, 403, 429)
    return type(exc).__module__.startswith(("requests", "urllib3", "sqlalchemy"))


def _auth_header() -> dict[str, str]:
    """Basic auth from the variables MLflow's client reads, for a server run with
    ``--app-name basic-auth``."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or password is None:
        return {}
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def probe(uri: str, timeout_s: float = 5.0) -> str | None:
    """None if the server of ``uri`` answers its health check, else why not (one line)."""
    if uri.startswith(("http://", "https://")):
        req = urllib.request.Request(f"{uri.rstrip('/')}/health", headers=_auth_header())
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return None if r.status == 200 else f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            return f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            return str(getattr(e, "reason", e))
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        return None if folder.is_dir() else f"folder {folder} does not exist"
    return None


# Answers that waiting does not change: the credentials are wrong or missing.
REFUSED = ("HTTP 401", "HTTP 403")


def wait_for_server(uri: str, wait_s: float, *, say=print) -> str | None:
    """Probe ``uri`` until it answers or ``wait_s`` seconds have passed (backoff 1, 2, 4 ... 30
    s between tries); None when it answered, else the last reason. A local SQLite file is not
    waited for (a missing folder will not appear by itself), nor a server that refuses the
    credentials."""
    deadline, pause = time.monotonic() + wait_s, 1.0
    why = probe(uri)
    if why is None or wait_s <= 0 or not uri.startswith(("http://", "https://")) or why in REFUSED:
        return why
    say(f"[tracking] {uri} is not answering ({why}); waiting up to {wait_s:g} s for it")
    while time.monotonic() + pause <= deadline:
        time.sleep(pause)
        pause = min(pause * 2, 30.0)
        why = probe(uri)
        if why is None:
            say(f"[tracking] {uri} answers")
            return None
        if why in REFUSED:
            return why
    return why
