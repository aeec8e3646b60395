"""Named points where the driver may be killed on purpose: the resume tests' hook.

``kill_point("after-model-upload")`` SIGKILLs this process when the environment variable
``ACERT_KILL_AT`` names that point, as a head-pod crash would at that moment; otherwise it does
nothing. The points mark the steps of the sweep's closing work that a resume must complete
exactly once (see tests/test_sweep_resume.py):

- ``after-trials``: every search finished, nothing evaluated on the test set yet;
- ``after-confirm-round``: a round of the confirm stage trained, its retrains not yet certified
  or recorded;
- ``after-model-upload``: a winner's model uploaded to MLflow, not yet registered;
- ``before-frontier-files``: winners evaluated and registered, frontier files not yet logged.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "ACERT_KILL_AT"
POINTS = ("after-trials", "after-confirm-round", "after-model-upload", "before-frontier-files")


def kill_point(name: str) -> None:
    assert name in POINTS, name
    if os.environ.get(ENV) == name:
        sys.stdout.flush()
        sys.stderr.write(f"[kill point] {name}: SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
