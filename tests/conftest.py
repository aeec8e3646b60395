"""Fixtures shared by the test modules, and MLflow's schema built once a session
(tests/mlflow_schema.py)."""

from __future__ import annotations

import pytest

from tests import mlflow_schema


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh working folder, and no MLflow or Ray address from the environment: a sweep run here
    uses the embedded defaults and writes only below ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def pytest_runtest_setup(item):
    """MLflow's table builder is wrapped (tests/mlflow_schema.py) once a test has loaded MLflow."""
    mlflow_schema.install_if_loaded()
