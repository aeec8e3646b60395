"""Fixtures shared by the test modules, and one shortcut: MLflow's schema is built once a session."""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

import pytest


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh working folder, and no MLflow or Ray address from the environment: a sweep run here
    uses the embedded defaults and writes only below ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


# --- MLflow's tables, built once ------------------------------------------------------------------
# A new SQLite tracking database gets its tables from MLflow's migrations (mlflow.store.db.utils.
# _initialize_tables: create_all, then every Alembic revision), 2-5 s a database on a loaded 2-core
# machine, and dozens of tests start from a new one. In this process the first new database is
# built by MLflow and kept as a template; every later one that is still empty (no table at all)
# receives a copy of it (SQLite's backup API), which is the same schema at the same revision. A
# database with any table, a non-file URI and other processes (sweep drivers started by tests,
# `mlflow server`) are left to MLflow. The project's code runs unchanged either way.
_SCHEMA = {"template": None, "lock": threading.Lock(), "patched": False}


def _sqlite_file(engine) -> Path | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _initialize_tables_once(original):
    def initialize(engine):
        import sqlalchemy

        path = _sqlite_file(engine)
        if path is None or sqlalchemy.inspect(engine).get_table_names():
            return original(engine)
        with _SCHEMA["lock"]:
            template = _SCHEMA["template"]
            if template is None:
                original(engine)
                engine.dispose()
                folder = Path(tempfile.mkdtemp(prefix="mlflow-schema-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
                template = folder / "schema.db"
                _copy(path, template)
                _SCHEMA["template"] = template
                return None
        engine.dispose()
        _copy(template, path)
        return None

    return initialize


def _copy(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def pytest_runtest_setup(item):
    """Once MLflow's database module is loaded (by the first test that uses MLflow), its table
    builder is wrapped as above; tests that never load MLflow do not pay its import."""
    if _SCHEMA["patched"] or "mlflow.store.db.utils" not in sys.modules:
        return
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    once = _initialize_tables_once(db_utils._initialize_tables)
    db_utils._initialize_tables = once  # the tracking store calls it through the module
    registry_store._initialize_tables = once  # the registry store imported the name
    _SCHEMA["patched"] = True
