"""The sweep's configuration, declared once: :class:`SweepConfig`.

Every setting is a typed field with its default and help text; the command line of
``python -m orchestrator.sweep`` is generated from these fields (``orchestrator.cli``), the
MLflow parent run records them as params, and ``<storage>/<name>/sweep.json`` stores them for
``--resume``. Settings a sweep shares with its trials (data, device, evaluation sizes, seed)
are re-declared with :func:`trainers.settings.same_as`, so their default and help are written
once, in :class:`trainers.config.TrainConfig`.

:meth:`SweepConfig.trial` is the only way a trial's :class:`TrainConfig` is made: the driver,
the Ray trainable and the test evaluation of the winners all call it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainers.config import DEVICES, TrainConfig, _names
from trainers.metrics import DONE  # noqa: F401  (re-exported for the searcher's users)
from trainers.settings import ConfigError, bad, field_types, same_as, setting, typed_value

SCHEDULERS = ("asha", "none")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # fullmatch: `$` would let a final "\n" in
SWEEP_FILE = "sweep.json"
# Keys the searcher adds to a trial's config that are not training settings. The searcher no
# longer writes search_phase (the phased design before issue #10); trials of sweeps recorded
# with it must still load (MLflow params, resumed sweeps), so it stays a known key.
TARGET, SEARCH_PHASE = "target", "search_phase"
TRIAL_META_KEYS = (TARGET, SEARCH_PHASE)


class SweepInputError(ConfigError):
    """Bad user input; the message is one line naming the flag and the offending value."""


def format_target(acc: float) -> str:
    """Canonical text of a target accuracy (0.95 -> '0.95'), used in names and tags."""
    return f"{acc:g}"


def is_remote_uri(path: str) -> bool:
    """True for pyarrow filesystem URIs (s3://, gs://, ...); local paths and file:// are not."""
    return "://" in path and not path.startswith("file://")


def _searchable() -> tuple[str, ...]:
    from trainers.methods import certified_methods

    return certified_methods()


def _searches() -> tuple[str, ...]:
    from orchestrator.search.studies import SEARCHES

    return tuple(SEARCHES)


def _protocols() -> tuple[str, ...]:
    from search_spaces import PROTOCOLS

    return PROTOCOLS


@dataclass(frozen=True)
class SweepConfig:
    """Everything one sweep depends on."""

    dataset: str = setting(help="data set to sweep", known=lambda: _names("trainers.data", "DATASETS"))
    accs: tuple[float, ...] = setting(help="target clean accuracies, comma-separated, e.g. 0.6,0.7,0.8")
    methods: tuple[str, ...] = setting(
        ("acert",), "training methods, comma-separated (one search each)", known=_searchable
    )
    trials: int = setting(24, "trial budget per method, shared by all targets")
    protocol: str = setting(
        "tuned",
        "search protocol: tuned (every method searches its training radius cap, 1/8 to 2x the data set's "
        "radius, and kappa up to 0.99) or paper (the cap fixed at the data set's radius, kappa searched)",
        known=_protocols,
    )
    search: str = setting(
        "targets",
        "how trials are proposed: targets (one constrained Optuna TPE study per target accuracy, sharing "
        "trials), pareto (one TPE study maximising accuracy and ACR, winners read off per target) or gp "
        "(per-target constrained studies with Optuna's Gaussian-process sampler: seconds per suggestion, tens "
        "of seconds with tens of trials in flight)",
        known=_searches,
    )
    epochs: int = same_as(
        TrainConfig,
        "epochs",
        help="epochs per trial (each trial trains this many unless the scheduler stops it early)",
    )
    data_dir: str = same_as(TrainConfig, "data_dir")
    download: bool = same_as(TrainConfig, "download")
    name: str = setting("", "sweep name (default: <dataset>-<time>)")
    resume: bool = setting(False, "continue the sweep `name` (set by --resume NAME)", cli=False)
    sweep_id: str = setting(
        "", "the sweep's identity, made once and kept in sweep.json and on every MLflow run", cli=False
    )
    storage: str = setting(
        "", "folder or pyarrow URI (s3://...) for Ray results and sweep.json (default: ./sweeps)"
    )
    tracking_uri: str = setting(
        "", "MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)"
    )
    tracking_wait: float = setting(
        300.0,
        "seconds to wait for an unreachable --tracking-uri server: at start (then exit 2) and before "
        "the frontier is published (then exit 75: --resume finishes it); during the search an outage "
        "never stops the sweep, its record waits in a journal in the sweep folder",
    )
    address: str | None = setting(
        None, "Ray cluster address ('auto' joins one; default: $RAY_ADDRESS, else local)"
    )
    shared_storage: bool = setting(
        False, "--storage and --data-dir are folders every node of the Ray cluster mounts (NFS, a RWX volume)"
    )
    cpus_per_trial: float = setting(1.0, "CPUs reserved per trial")
    gpus_per_trial: float = setting(0.0, "GPUs per trial; fractions share a GPU, e.g. 0.25")
    max_concurrent: int = setting(2, "trials running at once")
    scheduler: str = setting("asha", "early stopping: asha (on penalised validation ACR) or none")
    grace_epochs: int = setting(1, "ASHA: epochs before a trial may be stopped")
    penalty: float = setting(
        10.0, "ASHA: score penalty per unit of accuracy shortfall below a trial's target"
    )
    seed: int = same_as(
        TrainConfig, "seed", help="seed of the search and of every trial (fixes the validation split)"
    )
    max_failures: int = setting(1, "retries of a crashed trial from its checkpoint")
    trial_timeout: float = setting(
        7200.0,
        "seconds a trial may go without finishing an epoch (its first includes loading the data); "
        "then it is ended and recorded as timed out with the worst figures, not retried; 0: no limit",
    )
    checkpoint_every: int = setting(
        1,
        "a trial saves a checkpoint every N epochs; also at its last epoch, at every ASHA milestone "
        "(where it may be stopped) and on SIGTERM (a preempted trial keeps its last finished epoch)",
    )
    reuse_actors: bool = setting(
        True,
        "start the next trial in the process of a finished one (torch, the trainers and the loaded "
        "data set stay loaded); --no-reuse-actors: a fresh process per trial",
    )
    device: str = same_as(TrainConfig, "device")
    model: str | None = same_as(TrainConfig, "model")
    threads: int | None = same_as(
        TrainConfig, "threads", help="torch threads per trial (default: cpus per trial)"
    )
    train_subset: int | None = same_as(TrainConfig, "train_subset")
    synthetic_size: int = same_as(TrainConfig, "synthetic_size")
    val_acr_samples: int = same_as(TrainConfig, "val_acr_samples")
    test_samples: int | None = same_as(TrainConfig, "test_samples")
    # Not named cert_method: that is the trials' own (validation) bound, shared by name with TrainConfig
    test_cert_method: str = setting(
        "ibp",
        "bound of the winners' second set of test certificates, reported beside the trials' own (IBP) "
        "ones as test_acr_<method>, test_cert_acc_<method>@<eps>; best: each sample's largest radius "
        "over ibp, crown-ibp and crown",
        flag="cert-method",
        metavar="METHOD",
        known=lambda: _names("trainers.bounds", "BOUND_METHODS"),
    )
    confirm_seeds: int = setting(
        0,
        "confirm stage: retrain each target's best candidate this many times with fresh seeds (initialisation "
        "and data order; the validation split stays) and report means with 95-percent intervals; 0: off",
    )
    confirm_candidates: int = setting(
        3, "confirm stage: candidates tried per target when a retrained mean falls below the target"
    )
    optuna_storage: str = setting(
        "",
        "Optuna RDB URL for the per-target studies, e.g. postgresql://user@host/db on a cluster (SQLite on "
        "shared file systems is unreliable with several writers); default: a journal file in the sweep "
        "folder, or in memory (inside Ray's searcher checkpoint) with remote --storage",
    )
    register_models: bool = setting(
        True, "register each target's winner in the MLflow model registry", flag="register"
    )
    plugins: tuple[str, ...] = setting(
        (),
        "modules to import first, comma-separated: they may register data "
        "sets, models, training methods and search spaces",
    )
    fixed: tuple[str, ...] = setting(
        (),
        "training settings every trial uses instead of searching them, KEY=VALUE comma-separated, "
        "e.g. batch_size=128,lr=0.002,std_epochs=1,ramp_epochs=20 (each applies to the methods that "
        "take it; 'none' for an unset optional value)",
    )

    def __post_init__(self) -> None:
        from trainers.data import DATASETS

        if self.dataset not in DATASETS:
            raise bad("--dataset", self.dataset, f"known datasets: {', '.join(DATASETS.names())}")
        self._check_targets()
        searchable = _searchable()
        if not self.methods:
            raise bad("--methods", "", f"choose from {', '.join(searchable)}")
        for m in self.methods:
            if m not in searchable:
                raise bad("--methods", m, f"choose from {', '.join(searchable)}")
        if len(set(self.methods)) != len(self.methods):
            raise bad("--methods", ",".join(self.methods), "duplicate method")
        self._check_numbers()
        from trainers.bounds import BOUND_METHODS

        if self.test_cert_method not in BOUND_METHODS:
            raise bad("--cert-method", self.test_cert_method, f"known: {', '.join(BOUND_METHODS.names())}")
        if self.search not in _searches():
            raise bad("--search", self.search, f"choose one of {', '.join(_searches())}")
        if self.protocol not in _protocols():
            raise bad("--protocol", self.protocol, f"choose one of {', '.join(_protocols())}")
        if self.scheduler not in SCHEDULERS:
            raise bad("--scheduler", self.scheduler, f"choose one of {', '.join(SCHEDULERS)}")
        if self.device not in DEVICES:
            raise bad("--device", self.device, f"choose one of {', '.join(DEVICES)}")
        if not _NAME_RE.fullmatch(self.name):
            raise bad("--name", self.name, "use letters, digits, '.', '_' and '-' (at most 100)")
        if self.optuna_storage and not re.match(r"^[a-z][a-z0-9+]*://", self.optuna_storage):
            raise bad(
                "--optuna-storage",
                self.optuna_storage,
                "expected an RDB URL such as postgresql://user@host/db",
            )
        if self.address and not self.shared_storage and self.storage and not is_remote_uri(self.storage):
            raise bad(
                "--storage",
                self.storage,
                "with --address the trials run on other nodes, which cannot see this machine's folder; "
                "use s3://... or a folder every node mounts, and say so with --shared-storage",
            )
        try:  # the trials' shared settings are checked now, not in the first trial
            self.trial({})
            for method in self.methods:
                self.trial({"method": method, **self.fixed_settings(method)})
        except ConfigError as e:
            raise SweepInputError(str(e)) from None

    def _check_targets(self) -> None:
        if not self.accs:
            raise bad("--accs", "", "give at least one target accuracy, e.g. 0.6,0.7")
        for acc in self.accs:
            if not (isinstance(acc, int | float) and math.isfinite(acc) and 0.0 < acc < 1.0):
                raise bad("--accs", acc, "each target accuracy must lie in (0, 1)")
        dup = sorted({a for a in self.accs if self.accs.count(a) > 1})
        if dup:
            raise bad("--accs", format_target(dup[0]), "duplicate target accuracy")
        object.__setattr__(self, "accs", tuple(sorted(float(a) for a in self.accs)))

    def _check_numbers(self) -> None:
        ints = {
            "--trials": (self.trials, 1),
            "--epochs": (self.epochs, 1),
            "--max-concurrent": (self.max_concurrent, 1),
            "--max-failures": (self.max_failures, 0),
            "--checkpoint-every": (self.checkpoint_every, 1),
            "--grace-epochs": (self.grace_epochs, 1),
            "--synthetic-size": (self.synthetic_size, 16),
            "--val-acr-samples": (self.val_acr_samples, 1),
            "--confirm-seeds": (self.confirm_seeds, 0),
            "--confirm-candidates": (self.confirm_candidates, 1),
        }
        for flag, (value, low) in ints.items():
            if not isinstance(value, int) or value < low:
                raise bad(flag, value, f"must be an integer >= {low}")
        for flag, value in (
            ("--train-subset", self.train_subset),
            ("--test-samples", self.test_samples),
            ("--threads", self.threads),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(flag, value, "must be an integer >= 1")
        if isinstance(self.trial_timeout, bool) or not (
            isinstance(self.trial_timeout, int | float) and 0 <= self.trial_timeout < math.inf
        ):
            raise bad("--trial-timeout", self.trial_timeout, "must be a number of seconds >= 0 (0: no limit)")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise bad("--cpus-per-trial", self.cpus_per_trial, "must be > 0")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise bad("--gpus-per-trial", self.gpus_per_trial, "must be >= 0 (fractions allowed)")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise bad("--gpus-per-trial", self.gpus_per_trial, "above 1 it must be a whole number")
        if not (math.isfinite(self.penalty) and self.penalty >= 0):
            raise bad("--penalty", self.penalty, "must be >= 0")
        if not (isinstance(self.tracking_wait, int | float) and math.isfinite(self.tracking_wait)) or (
            self.tracking_wait < 0
        ):
            raise bad("--tracking-wait", self.tracking_wait, "must be a number of seconds >= 0")
        if self.trials < len(self.accs):
            raise bad("--trials", self.trials, f"needs at least one trial per target ({len(self.accs)})")
        if self.grace_epochs > self.epochs:
            raise bad("--grace-epochs", self.grace_epochs, f"must be <= --epochs ({self.epochs})")

    # --- derived values -------------------------------------------------------------
    @property
    def sweep_dir(self) -> str:
        """Folder (or URI) holding sweep.json, the Optuna study and one Ray experiment per method."""
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def trial_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_trial))

    def checkpoint_due(self, epoch: int) -> bool:
        """Whether a trial saves a checkpoint after ``epoch`` (1-based; the trainable also saves
        at a trial's last epoch): every ``checkpoint_every`` epochs and at every ASHA milestone,
        so that a trial the scheduler stops ends on a checkpoint of the epoch it was judged at."""
        if epoch % self.checkpoint_every == 0:
            return True
        if self.scheduler != "asha":
            return False
        from orchestrator.scheduler import REDUCTION_FACTOR, milestones

        return epoch in milestones(self.grace_epochs, self.epochs, REDUCTION_FACTOR)

    @property
    def spec(self):
        from trainers.data import get_dataset

        return get_dataset(self.dataset)

    @property
    def cert_eps(self) -> tuple[float, ...]:
        return self.spec.cert_eps

    def fixed_settings(self, method: str) -> dict[str, Any]:
        """``--fixed`` as typed values: those of the settings ``method`` takes (a search space's
        value for them is replaced, see ``search_spaces.with_fixed``)."""
        from trainers.methods import TRAINING_METHODS

        common = field_types(TrainConfig)
        own = field_types(TRAINING_METHODS.get(method).params)
        out = {}
        for key, value in _parse_fixed(self.fixed, self.methods).items():
            if key in own or key in common:
                out[key] = typed_value("--fixed", key, value, own.get(key, common.get(key)))
        return out

    def trial(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """The training config of one trial: the settings every trial shares (the fields this
        config has in common with TrainConfig), then the trial's own values (method and tuned
        hyperparameters, as a search space returns them). The searcher's bookkeeping keys
        (target, search phase) are not training settings and are left out.

        The seed is the same for all trials on purpose: it fixes the validation split, so every
        trial is scored on the same samples."""
        values = {name: getattr(self, name) for name in _SHARED_WITH_TRIALS}
        values["threads"] = self.trial_threads
        values["download"] = False  # the driver fetched the data before the trials (preflight)
        # trials never touch the test set: only the winners are evaluated on it, after selection
        values["eval_test_at_end"] = False
        values["method"] = self.methods[0]
        values.update({k: v for k, v in overrides.items() if k not in TRIAL_META_KEYS})
        return TrainConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SweepConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise SweepInputError(f"invalid sweep setting {unknown[0]!r}: not a field of SweepConfig")
        kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kept)

    def replace(self, **changes: Any) -> SweepConfig:
        return dataclasses.replace(self, **changes)


# Per-trial settings --fixed may not set: which method runs, and the test-set evaluation (the
# sweep evaluates only the winners on the test set, after selection).
_NOT_FIXABLE = ("method", "params", "eval_test_at_end")


def _parse_fixed(items: tuple[str, ...], methods: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE items -> {key: text}; each key a per-trial setting of some swept method."""
    from trainers.methods import TRAINING_METHODS

    common = set(field_types(TrainConfig)) - set(_SHARED_WITH_TRIALS) - set(_NOT_FIXABLE)
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = (t.strip() for t in item.partition("="))
        if not sep or not key or not value:
            raise bad("--fixed", item, "expected KEY=VALUE, e.g. batch_size=128")
        if key in out:
            raise bad("--fixed", item, f"{key} is given twice")
        if key in _SHARED_WITH_TRIALS:
            raise bad("--fixed", item, f"{key} is a sweep setting: use --{key.replace('_', '-')}")
        takers = [m for m in methods if key in common or key in field_types(TRAINING_METHODS.get(m).params)]
        if not takers:
            raise bad("--fixed", item, f"no swept method ({', '.join(methods)}) takes a setting {key!r}")
        out[key] = value
    return out


_SHARED_WITH_TRIALS = tuple(
    sorted(
        {f.name for f in dataclasses.fields(SweepConfig)} & {f.name for f in dataclasses.fields(TrainConfig)}
    )
)
