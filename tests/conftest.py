"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh working folder, and no MLflow or Ray address from the environment: a sweep run here
    uses the embedded defaults and writes only below ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path
