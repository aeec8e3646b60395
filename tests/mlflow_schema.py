"""MLflow's tables, built once a test session.

A new SQLite tracking database gets its tables from MLflow's migrations (mlflow.store.db.utils.
_initialize_tables: create_all, then every Alembic revision), 2-5 s a database on a loaded 2-core
machine, and dozens of tests start from a new one. In the pytest process the first new database
is built by MLflow and kept as a template; every later one that is still empty (no table at all)
receives a copy of it (SQLite's backup API), which is the same schema at the same revision. A
database with any table and a non-file URI are left to MLflow. The project's code runs unchanged
either way.

Other processes (a sweep driver a test starts, ``mlflow server``) do not load this: a test that
starts one on a new database may make it here first with :func:`new_database` (the tables only;
the process adds its default experiment as it would to a database it had built).
"""

from __future__ import annotations

import atexit
import shutil
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path

_STATE = {"template": None, "patched": False}
_LOCK = threading.Lock()


def _sqlite_file(engine) -> Path | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _copy(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def _once(original):
    def initialize(engine):
        import sqlalchemy

        path = _sqlite_file(engine)
        if path is None or sqlalchemy.inspect(engine).get_table_names():
            return original(engine)
        with _LOCK:
            if sqlalchemy.inspect(engine).get_table_names():  # another thread built it meanwhile
                return None
            if _STATE["template"] is None:
                original(engine)
                engine.dispose()
                folder = Path(tempfile.mkdtemp(prefix="mlflow-schema-"))
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
                _copy(path, folder / "schema.db")
                _STATE["template"] = folder / "schema.db"
                return None
            engine.dispose()
            _copy(_STATE["template"], path)
        return None

    return initialize


def install() -> None:
    """Wrap MLflow's table builder as above (once)."""
    if _STATE["patched"]:
        return
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    once = _once(db_utils._initialize_tables)
    db_utils._initialize_tables = once  # the tracking store calls it through the module
    registry_store._initialize_tables = once  # the registry store imported the name
    _STATE["patched"] = True


def install_if_loaded() -> None:
    """``install`` once MLflow's database module is loaded (a test that never loads MLflow does
    not pay its import)."""
    if not _STATE["patched"] and "mlflow.store.db.utils" in sys.modules:
        install()


def new_database(path: Path) -> str:
    """A new SQLite tracking database at ``path`` holding MLflow's tables and nothing else (a copy
    of the template), for a process that a test starts on it (a sweep driver, ``mlflow server``):
    that process finds the tables and goes on as with a database it had built. Returns its URI."""
    install()
    with _LOCK:
        template = _STATE["template"]
    if template is None:  # built by MLflow, through the wrapped builder, on a throwaway database
        from mlflow.tracking import MlflowClient

        first = Path(tempfile.mkdtemp(prefix="mlflow-first-"))
        atexit.register(shutil.rmtree, first, ignore_errors=True)
        MlflowClient(tracking_uri=f"sqlite:///{first / 'mlflow.db'}").search_experiments(max_results=1)
        template = _STATE["template"]
    _copy(template, path)
    return f"sqlite:///{path}"
