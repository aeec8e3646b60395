"""Command line of ``python -m orchestrator.sweep``: flags -> one frozen :class:`SweepConfig`.

The parser is public (``build_parser``) because the Kubernetes RayJob entrypoint is checked
against it. Validation happens in ``SweepConfig.__post_init__`` so that a config built from a
dict (a resumed sweep's ``sweep.json``) is checked exactly like one built from flags; a bad
value becomes a one-line error naming the flag and the value, and exit code 2, before
anything expensive (Ray, MLflow, data) starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.config import DATASET_DEFAULTS, DEVICES, METHODS

SCHEDULERS = ("asha", "none")
SEARCH_METHODS = tuple(m for m in METHODS if m != "standard")  # `standard` has no ACR to trade
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SWEEP_FILE = "sweep.json"


class SweepInputError(ValueError):
    """Bad user input; the message is one line naming the flag and the offending value."""


def _bad(flag: str, value: Any, why: str) -> SweepInputError:
    return SweepInputError(f"invalid {flag} {value!r}: {why}")


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else an *absolute* SQLite file: Ray workers and the driver must
    all write the same database (a relative URI means one database per working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_storage() -> str:
    return str(Path.cwd().resolve() / "sweeps")


def is_remote_uri(path: str) -> bool:
    """True for pyarrow filesystem URIs (s3://, gs://, ...); local paths and file:// are not."""
    return "://" in path and not path.startswith("file://")


def format_target(acc: float) -> str:
    """Canonical text of a target accuracy (0.95 -> '0.95'), used in names and tags."""
    return f"{acc:g}"


@dataclass(frozen=True)
class SweepConfig:
    """Everything one sweep depends on; written to ``<storage>/<name>/sweep.json`` and to the
    MLflow parent run's params, and read back by ``--resume``."""

    dataset: str
    accs: tuple[float, ...]  # target clean accuracies, strictly increasing after validation
    methods: tuple[str, ...] = ("acert",)
    trials: int = 24  # trial budget per method, shared by all targets
    epochs: int = 10  # max epochs per trial; the search space picks <= this
    data_dir: str = "./data"
    download: bool = True
    name: str = ""
    resume: bool = False
    storage: str = ""
    tracking_uri: str = ""
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    scheduler: str = "asha"
    grace_epochs: int = 1  # ASHA: epochs before a trial may be stopped
    penalty: float = 10.0  # ASHA score = val_acr / ref_eps - penalty * max(0, target - val_acc)
    seed: int = 0
    max_failures: int = 1
    device: str = "auto"
    model: str | None = None
    threads: int | None = None  # torch threads inside a trial; None: from cpus_per_trial
    train_subset: int | None = None
    synthetic_size: int = 2048
    val_acr_samples: int = 500
    test_samples: int | None = None  # None: the whole test set for the final evaluation
    register_models: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_DEFAULTS:
            known = ", ".join(sorted(DATASET_DEFAULTS))
            raise _bad("--dataset", self.dataset, f"known datasets: {known}")
        if not self.accs:
            raise _bad("--accs", "", "give at least one target accuracy, e.g. 0.6,0.7")
        for acc in self.accs:
            if not (isinstance(acc, int | float) and math.isfinite(acc) and 0.0 < acc < 1.0):
                raise _bad("--accs", acc, "each target accuracy must lie in (0, 1)")
        dup = sorted({a for a in self.accs if self.accs.count(a) > 1})
        if dup:
            raise _bad("--accs", format_target(dup[0]), "duplicate target accuracy")
        object.__setattr__(self, "accs", tuple(sorted(float(a) for a in self.accs)))
        if not self.methods:
            raise _bad("--methods", "", f"choose from {', '.join(SEARCH_METHODS)}")
        for m in self.methods:
            if m not in SEARCH_METHODS:
                raise _bad("--methods", m, f"choose from {', '.join(SEARCH_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise _bad("--methods", ",".join(self.methods), "duplicate method")
        self._check_numbers()
        if self.scheduler not in SCHEDULERS:
            raise _bad("--scheduler", self.scheduler, f"choose one of {', '.join(SCHEDULERS)}")
        if self.device not in DEVICES:
            raise _bad("--device", self.device, f"choose one of {', '.join(DEVICES)}")
        if not _NAME_RE.match(self.name):
            raise _bad("--name", self.name, "use letters, digits, '.', '_' and '-' (at most 100)")

    def _check_numbers(self) -> None:
        ints = {
            "--trials": (self.trials, 1),
            "--epochs": (self.epochs, 1),
            "--max-concurrent": (self.max_concurrent, 1),
            "--max-failures": (self.max_failures, 0),
            "--grace-epochs": (self.grace_epochs, 1),
            "--synthetic-size": (self.synthetic_size, 16),
            "--val-acr-samples": (self.val_acr_samples, 1),
        }
        for flag, (value, low) in ints.items():
            if not isinstance(value, int) or value < low:
                raise _bad(flag, value, f"must be an integer >= {low}")
        for flag, value in (
            ("--train-subset", self.train_subset),
            ("--test-samples", self.test_samples),
            ("--threads", self.threads),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise _bad(flag, value, "must be an integer >= 1")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise _bad("--cpus-per-trial", self.cpus_per_trial, "must be > 0")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise _bad("--gpus-per-trial", self.gpus_per_trial, "must be >= 0 (fractions allowed)")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise _bad("--gpus-per-trial", self.gpus_per_trial, "above 1 it must be a whole number")
        if not (math.isfinite(self.penalty) and self.penalty >= 0):
            raise _bad("--penalty", self.penalty, "must be >= 0")
        if self.trials < len(self.accs):
            raise _bad("--trials", self.trials, f"needs at least one trial per target ({len(self.accs)})")
        if self.grace_epochs > self.epochs:
            raise _bad("--grace-epochs", self.grace_epochs, f"must be <= --epochs ({self.epochs})")

    # --- derived values -------------------------------------------------------------
    @property
    def sweep_dir(self) -> str:
        """Folder (or URI) holding sweep.json, the Optuna study and one Ray experiment per method."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def trial_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_trial))

    @property
    def cert_eps(self) -> tuple[float, ...]:
        return tuple(DATASET_DEFAULTS[self.dataset]["cert_eps"])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["accs"], d["methods"] = list(self.accs), list(self.methods)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SweepConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in values.items() if k in names}
        kept["accs"] = tuple(kept.get("accs", ()))
        kept["methods"] = tuple(kept.get("methods", ("acert",)))
        return cls(**kept)

    def replace(self, **changes: Any) -> SweepConfig:
        return dataclasses.replace(self, **changes)


# --- parsing ------------------------------------------------------------------------
def _float_list(flag: str, text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",")]
    if text.strip() == "" or any(t == "" for t in items):
        raise _bad(flag, text, "expected a comma-separated list of numbers such as 0.6,0.7")
    out = []
    for t in items:
        try:
            out.append(float(t))
        except ValueError:
            raise _bad(flag, t, "not a number") from None
    return tuple(out)


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) so logs and CI show just the cause."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m orchestrator.sweep",
        description="Accuracy-ACR Pareto frontier by Ray Tune + Optuna, recorded in MLflow.",
    )
    a = p.add_argument
    a("--dataset", help="mnist, fashion-mnist, cifar10, tinyimagenet or synthetic")
    a("--accs", help="target clean accuracies, comma-separated, e.g. 0.6,0.7,0.8")
    a("--methods", default="acert", help="comma-separated: acert, ibp, crown-ibp (one search each)")
    a("--trials", type=int, default=24, help="trial budget per method, shared by all targets")
    a("--epochs", type=int, default=10, help="max epochs per trial")
    a("--data-dir", default="./data")
    a("--no-download", action="store_true", help="fail if the dataset is not already in --data-dir")
    a("--name", help="sweep name (default: <dataset>-<time>)")
    a("--resume", metavar="NAME", help="continue the interrupted sweep NAME (its saved settings)")
    a(
        "--resume-if-exists",
        action="store_true",
        help="with --name: if a sweep of that name exists in --storage, continue it with its saved "
        "settings (as --resume NAME) instead of refusing; for restarted jobs (KubeRay backoffLimit)",
    )
    a("--storage", default=None, help="folder or pyarrow URI (s3://...) for Ray results (default ./sweeps)")
    a(
        "--tracking-uri",
        default=None,
        help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)",
    )
    a("--address", default=None, help="Ray cluster address ('auto' joins one; default $RAY_ADDRESS or local)")
    a("--cpus-per-trial", type=float, default=1.0)
    a("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.25")
    a("--max-concurrent", type=int, default=2)
    a("--scheduler", default="asha", help="asha (early stopping on penalised val ACR) or none")
    a("--grace-epochs", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    a("--penalty", type=float, default=10.0, help="ASHA score penalty per unit of accuracy shortfall")
    a("--seed", type=int, default=0)
    a("--max-failures", type=int, default=1, help="retries of a crashed trial from its checkpoint")
    a("--device", default="auto", help="auto, cpu or cuda")
    a("--model", default=None, help="architecture (default: the dataset's)")
    a("--threads", type=int, default=None, help="torch threads per trial (default: cpus per trial)")
    a("--train-subset", type=int, default=None, help="train on the first N training samples")
    a("--synthetic-size", type=int, default=2048)
    a("--val-acr-samples", type=int, default=500, help="validation samples used for ACR")
    a("--test-samples", type=int, default=None, help="test samples in the final evaluation (default all)")
    a("--no-register", action="store_true", help="do not register the winners in the model registry")
    return p


def _absolute_sqlite(uri: str) -> str:
    """sqlite:///rel.db -> sqlite:////abs/rel.db: Ray workers run in other folders."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _fail(message: str) -> None:
    sys.stderr.write(f"python -m orchestrator.sweep: error: {message}\n")
    raise SystemExit(2)


def load_saved_config(storage: str, name: str) -> dict[str, Any]:
    """The ``sweep.json`` of an earlier sweep (local folder or pyarrow URI)."""
    from orchestrator.storage import read_text

    text = read_text(f"{storage.rstrip('/')}/{name}/{SWEEP_FILE}")
    if text is None:
        raise _bad("--resume", name, f"no sweep of that name under {storage}")
    return json.loads(text)


def _resume_argv(ns: argparse.Namespace) -> list[str]:
    """The --resume command line equivalent to ``ns`` (where things run may change)."""
    argv = ["--resume", ns.name, "--storage", ns.storage or default_storage()]
    for flag in ("address", "tracking_uri"):
        if getattr(ns, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), getattr(ns, flag)]
    return argv


def parse_sweep_args(argv: list[str] | None = None) -> SweepConfig:
    """Flags -> validated SweepConfig; bad input exits 2 with a one-line message."""
    ns = build_parser().parse_args(argv)
    storage = ns.storage or default_storage()
    if not is_remote_uri(storage):
        storage = str(Path(storage.removeprefix("file://")).expanduser().resolve())
    try:
        if ns.resume:
            saved = load_saved_config(storage, ns.resume)
            saved.update(resume=True, storage=storage)
            for key in ("address", "tracking_uri"):  # where things run may change; what runs not
                if getattr(ns, key) is not None:
                    saved[key] = getattr(ns, key)
            return SweepConfig.from_dict(saved)
        if ns.dataset is None:
            raise _bad("--dataset", "", "required (or give --resume NAME)")
        if ns.accs is None:
            raise _bad("--accs", "", "required, e.g. --accs 0.6,0.7")
        if ns.resume_if_exists:
            if ns.name is None:
                raise _bad("--resume-if-exists", True, "needs a fixed --name")
            from orchestrator.storage import read_text

            if read_text(f"{storage.rstrip('/')}/{ns.name}/{SWEEP_FILE}") is not None:
                sys.stderr.write(f"sweep {ns.name!r} exists under {storage}: resuming it with its saved settings\n")
                return parse_sweep_args(_resume_argv(ns))
        name = ns.name if ns.name is not None else f"{ns.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        return SweepConfig(
            dataset=ns.dataset,
            accs=_float_list("--accs", ns.accs),
            methods=_str_list(ns.methods),
            trials=ns.trials,
            epochs=ns.epochs,
            data_dir=str(Path(ns.data_dir).expanduser().resolve()),
            download=not ns.no_download,
            name=name,
            storage=storage,
            tracking_uri=_absolute_sqlite(ns.tracking_uri or default_tracking_uri()),
            address=ns.address or os.environ.get("RAY_ADDRESS") or None,
            cpus_per_trial=ns.cpus_per_trial,
            gpus_per_trial=ns.gpus_per_trial,
            max_concurrent=ns.max_concurrent,
            scheduler=ns.scheduler,
            grace_epochs=ns.grace_epochs,
            penalty=ns.penalty,
            seed=ns.seed,
            max_failures=ns.max_failures,
            device=ns.device,
            model=ns.model,
            threads=ns.threads,
            train_subset=ns.train_subset,
            synthetic_size=ns.synthetic_size,
            val_acr_samples=ns.val_acr_samples,
            test_samples=ns.test_samples,
            register_models=not ns.no_register,
        )
    except SweepInputError as e:
        _fail(str(e))
    raise AssertionError("unreachable")
