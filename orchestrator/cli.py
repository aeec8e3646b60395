"""Command line of ``python -m orchestrator.sweep``: flags -> one frozen :class:`SweepConfig`.

The flags are generated from the fields of :class:`orchestrator.config.SweepConfig` (one flag
per field, with its type, default and help), plus ``--resume NAME`` and
``--resume-if-exists``. The parser is public (``build_parser``) because the Kubernetes
RayJob entrypoint is checked against it. Parsing raises :class:`SweepInputError` (one line
naming the flag and the value); only ``main`` turns it into exit code 2, before anything
expensive (Ray, MLflow, data) starts.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from orchestrator.config import (
    SWEEP_FILE,
    SweepConfig,
    SweepInputError,
    format_target,
    is_remote_uri,
)
from trainers.registry import import_plugins
from trainers.settings import ConfigError, OneLineParser, add_fields, bad, field_types, fields_from, has_type

__all__ = [
    "SWEEP_FILE",
    "SweepConfig",
    "SweepInputError",
    "build_parser",
    "format_target",
    "is_remote_uri",
    "parse_sweep_args",
]


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else an *absolute* SQLite file: Ray workers and the driver must
    all write the same database (a relative URI means one database per working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_storage() -> str:
    return str(Path.cwd().resolve() / "sweeps")


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="python -m orchestrator.sweep",
        description="Accuracy-ACR Pareto frontier by Ray Tune + Optuna, recorded in MLflow.",
    )
    p.add_argument(
        "--resume", metavar="NAME", help="continue the interrupted sweep NAME (its saved settings)"
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of settings (e.g. configs/cifar10.json); flags override it",
    )
    p.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="with --name: if a sweep of that name exists in --storage, continue it with its saved "
        "settings (as --resume NAME) instead of refusing; for restarted jobs (KubeRay backoffLimit)",
    )
    add_fields(p, SweepConfig)
    return p


def _absolute_sqlite(uri: str) -> str:
    """sqlite:///rel.db -> sqlite:////abs/rel.db: Ray workers run in other folders."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def load_saved_config(storage: str, name: str) -> dict[str, Any]:
    """The ``sweep.json`` of an earlier sweep (local folder or pyarrow URI)."""
    from orchestrator.storage import read_text

    uri = f"{storage.rstrip('/')}/{name}/{SWEEP_FILE}"
    text = read_text(uri)
    if text is None:
        raise bad("--resume", name, f"no sweep of that name under {storage}")
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad("--resume", name, f"{uri} is not valid JSON ({e}); it was damaged") from None
    if not isinstance(saved, dict):
        raise bad("--resume", name, f"{uri} is not a JSON object of sweep settings; it was damaged")
    return saved


def differing_settings(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    """The settings a --resume-if-exists command asks for that differ from the saved sweep's,
    as flags with both values (settings a sweep.json of an older version lacks are not compared)."""
    out = []
    for k, v in asked.items():
        if k in _NOT_COMPARED or k in _CHANGEABLE_ON_RESUME or k not in saved:
            continue
        old = tuple(saved[k]) if isinstance(saved[k], list) else saved[k]
        new = tuple(v) if isinstance(v, list) else v
        if old != new and not (isinstance(old, int | float) and isinstance(new, int | float) and old == new):
            out.append(f"--{k.replace('_', '-')} {_text(new)} (saved: {_text(old)})")
    return out


def _text(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


# Where things run may change on resume; what runs does not.
_CHANGEABLE_ON_RESUME = ("address", "tracking_uri", "shared_storage", "tracking_wait")
# Not settings of what the sweep computes: made per run or derived from the name.
_NOT_COMPARED = ("name", "resume", "storage", "sweep_id")


def _flags(values: dict[str, Any]) -> list[str]:
    """Settings back to flags (for the equivalent --resume command line)."""
    out = []
    for k, v in values.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else [flag, str(v)]
    return out


def parse_sweep_args(argv: list[str] | None = None) -> SweepConfig:
    """Flags -> validated SweepConfig; bad input raises SweepInputError."""
    try:
        return _parse(argv)
    except SweepInputError:
        raise
    except ConfigError as e:
        raise SweepInputError(str(e)) from None


_EXPECTED = {
    int: "an integer",
    int | None: "an integer or null",
    float: "a number",
    bool: "true or false",
    str | None: "a string or null",
    tuple[float, ...]: "a list of numbers",
    tuple[str, ...]: "a list of strings",
}


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON file of SweepConfig fields (configs/*.json): defaults that flags override."""
    import dataclasses

    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise bad("--config", path, f"not a readable JSON file ({e})") from None
    if not isinstance(values, dict):
        raise bad("--config", path, "expected a JSON object of sweep settings")
    names = {f.name for f in dataclasses.fields(SweepConfig) if f.metadata.get("cli", True)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise bad("--config", path, f"unknown setting {unknown[0]!r} (settings are the flags, with _ for -)")
    types = field_types(SweepConfig)  # argparse converts only text, not these defaults: check here
    for key, value in values.items():
        if not has_type(value, types[key]):
            why = f"{key}={json.dumps(value)}: expected {_EXPECTED.get(types[key], 'a string')}"
            raise bad("--config", path, why)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _parse(argv: list[str] | None) -> SweepConfig:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config_file(pre.config))
    ns = parser.parse_args(argv)
    storage = ns.storage or default_storage()
    if not is_remote_uri(storage):
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
    given = {k: v for k, v in fields_from(ns, SweepConfig).items() if k in _CHANGEABLE_ON_RESUME and v}
    if ns.resume:
        saved = load_saved_config(storage, ns.resume)
        import_plugins(saved.get("plugins", ()))
        return SweepConfig.from_dict({**saved, "resume": True, "storage": storage, **given})
    import_plugins(ns.plugins)  # before validation: plugins may register methods and data sets
    if ns.dataset is None:
        raise bad("--dataset", "", "required (or give --resume NAME)")
    if ns.accs is None:
        raise bad("--accs", "", "required, e.g. --accs 0.6,0.7")
    if ns.resume_if_exists and not ns.name:
        raise bad("--resume-if-exists", True, "needs a fixed --name")
    values = fields_from(ns, SweepConfig)
    values.update(
        resume=False,
        name=ns.name or f"{ns.dataset}-{time.strftime('%Y%m%d-%H%M%S')}",
        data_dir=str(Path(ns.data_dir).expanduser().resolve()),
        storage=storage,
        tracking_uri=_absolute_sqlite(ns.tracking_uri or default_tracking_uri()),
        address=ns.address or os.environ.get("RAY_ADDRESS") or None,
        sweep_id=uuid.uuid4().hex[:16],
    )
    if ns.resume_if_exists:
        from orchestrator.storage import read_text

        if read_text(f"{storage.rstrip('/')}/{ns.name}/{SWEEP_FILE}") is not None:
            saved = load_saved_config(storage, ns.name)
            changed = differing_settings(saved, SweepConfig(**values).to_dict())
            if changed:
                raise bad(
                    "--resume-if-exists",
                    ns.name,
                    f"the saved sweep differs in {'; '.join(changed)}: resume it with the same flags, "
                    "or start a new sweep under another --name",
                )
            import sys

            sys.stderr.write(
                f"sweep {ns.name!r} exists under {storage}: resuming it with its saved settings\n"
            )
            return _parse(["--resume", ns.name, "--storage", storage, *_flags(given)])
    return SweepConfig(**values)
