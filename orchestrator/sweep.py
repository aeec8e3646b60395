"""``python -m orchestrator.sweep``: the accuracy-ACR frontier of a dataset, per method.

Flow: flags -> :class:`SweepConfig` -> preflight checks (bad input exits 2 before Ray
starts) -> one Ray Tune experiment per method (``<storage>/<name>/<method>``), proposed by a
:class:`TargetSearcher` and pruned by :class:`PenalisedASHA` -> the winner of every target
evaluated on the test set -> frontier artifacts and registered models on the MLflow parent run.

Resume is the same command path: an experiment folder that ``Tuner.can_restore`` accepts is
restored (finished trials are skipped, in-flight ones continue from their checkpoints, the
searcher and its Optuna studies come back), one that does not exist yet is started.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.cli import parse_sweep_args
from orchestrator.config import SWEEP_FILE, SweepConfig, SweepInputError, is_remote_uri
from orchestrator.killpoints import kill_point
from orchestrator.storage import DriverLock, create_exclusive, read_text
from search_spaces import SearchSpace, SpaceContext, get_space, with_fixed
from trainers.settings import ConfigError

# A killed driver loses at most this many seconds of Tune's experiment state (Ray's adaptive
# default is ~10 s or more). Cheap since the searcher pickles a compact log, not its studies.
CHECKPOINT_PERIOD_S = "2"
# The trials are done and saved but MLflow stayed away past --tracking-wait: a temporary failure
# (sysexits' EX_TEMPFAIL), which --resume completes.
EXIT_TRACKING_AWAY = 75


# --- preflight: everything that can be wrong with the input, checked before Ray -----------
def check_tracking_uri(uri: str, wait_s: float = 0.0) -> None:
    """The tracking server answers (waiting up to ``wait_s`` for one that does not yet), or a
    SQLite file's folder exists; file stores are refused."""
    from orchestrator.tracking import wait_for_server

    if uri.startswith("file:") or "://" not in uri:
        raise SweepInputError(
            f"invalid --tracking-uri {uri!r}: file stores are refused by MLflow 3; "
            "use sqlite:///ABSOLUTE/PATH.db or http://HOST:PORT"
        )
    why = wait_for_server(uri, wait_s, say=lambda line: print(line, file=sys.stderr, flush=True))
    if why is not None:
        waited = (
            f" after waiting {wait_s:g} s (--tracking-wait)"
            if wait_s and uri.startswith(("http://", "https://"))
            else ""
        )
        raise SweepInputError(f"invalid --tracking-uri {uri!r}: server unreachable ({why}){waited}")


def check_identity(cfg: SweepConfig) -> None:
    """A new sweep may not take the name of another one in MLflow (the storage of that one may
    have been lost or changed: its runs, models and studies would be mixed into this one's)."""
    from orchestrator.tracking.store import MlflowStore

    if cfg.resume:
        return
    if (
        cfg.tracking_uri.startswith("sqlite:///")
        and not Path(cfg.tracking_uri.removeprefix("sqlite:///")).exists()
    ):
        return  # no database yet, so no sweep in it (and none is created by looking)
    others = [
        sid or "none (an older version)"
        for _, sid in MlflowStore(cfg.tracking_uri, cfg.dataset, cfg.name).parents_named(cfg.name)
        if sid != cfg.sweep_id
    ]
    if others:
        raise SweepInputError(
            f"invalid --name {cfg.name!r}: MLflow at {cfg.tracking_uri} already records a sweep of that "
            f"name (sweep id {others[0]}), not this one (sweep id {cfg.sweep_id}, storage {cfg.sweep_dir}); "
            "choose another --name, or --resume it from the storage it ran on"
        )


def check_studies(cfg: SweepConfig) -> None:
    """A new sweep's Optuna studies may not exist yet in ``--optuna-storage`` (a database that
    outlives the sweep folder): TPE would merge another sweep's trials into this one's. A storage
    that cannot be read now is left to the search, which reports it."""
    if cfg.resume or not cfg.optuna_storage:
        return
    import optuna

    try:
        names = optuna.get_all_study_names(storage=cfg.optuna_storage)
    except Exception as e:  # noqa: BLE001 - any failure to read: not this check's to judge
        print(f"[optuna] could not list the studies in --optuna-storage ({str(e).splitlines()[0][:200]})",
              file=sys.stderr, flush=True)  # fmt: skip
        return
    taken = sorted(
        n
        for n in names
        for m in cfg.methods
        # the study names of every --search option (orchestrator.search.studies, study_name)
        if n.startswith(f"{cfg.name}-{m}-acc") or n == f"{cfg.name}-{m}-pareto"
    )
    if taken:
        raise SweepInputError(
            f"invalid --name {cfg.name!r}: --optuna-storage already holds its studies ({taken[0]}"
            f"{f' and {len(taken) - 1} more' if len(taken) > 1 else ''}) from another sweep of that name; "
            "choose another --name, or --resume that sweep"
        )


def check_data(cfg: SweepConfig) -> None:
    """Load (and with download allowed, fetch) the data once in the driver, so trials never
    race to download it and a missing data set is a clear error, not N failed trials."""

    from trainers.data import DataMissingError

    try:
        cfg.trial({}).load_splits(download=cfg.download)
    except DataMissingError as e:
        raise SweepInputError(f"invalid --data-dir {cfg.data_dir!r}: {e}".splitlines()[0]) from None


def preflight(cfg: SweepConfig) -> DriverLock:
    """Every check of the input, then the claim on the sweep folder: this process's lock on it
    and, for a new sweep, ``sweep.json`` created exclusively. Returns the lock (held until the
    driver exits)."""
    exists = read_text(f"{cfg.sweep_dir}/{SWEEP_FILE}") is not None
    if exists and not cfg.resume:
        raise SweepInputError(
            f"invalid --name {cfg.name!r}: a sweep of that name exists under "
            f"{cfg.storage}; continue it with --resume {cfg.name}"
        )
    # The driver fetches the data once, before any trial starts; trials never download
    # (SweepConfig.trial), so they cannot race each other for it. On a cluster the data folder
    # is a volume every node mounts (k8s/: the head's prefetch-data init step fills it). First,
    # since it writes nothing when it fails and the tracking checks may create a database.
    check_data(cfg)
    check_tracking_uri(cfg.tracking_uri, cfg.tracking_wait)
    check_identity(cfg)
    check_studies(cfg)
    if cfg.address is None:  # on a cluster the GPUs are the workers', not the driver's
        if cfg.device == "cuda" or cfg.gpus_per_trial > 0:
            import torch

            if not torch.cuda.is_available():
                raise SweepInputError(
                    f"invalid --gpus-per-trial {cfg.gpus_per_trial!r} / --device "
                    f"{cfg.device!r}: no CUDA device on this machine"
                )
    return claim(cfg)


def claim(cfg: SweepConfig) -> DriverLock:
    """Lock the sweep folder and, for a new sweep, create its sweep.json (exclusively: of two
    drivers started on one name, the second is refused)."""
    lock = DriverLock(cfg.sweep_dir)
    holder = lock.acquire()
    if holder is not None:
        raise SweepInputError(
            f"invalid --name {cfg.name!r}: the sweep is being run by another driver ({holder}); "
            "wait for it to end, or stop it first"
        )
    if not cfg.resume and not create_exclusive(
        f"{cfg.sweep_dir}/{SWEEP_FILE}", json.dumps(cfg.to_dict(), indent=2)
    ):
        lock.release()
        raise SweepInputError(
            f"invalid --name {cfg.name!r}: a sweep of that name was just created under {cfg.storage} "
            "by another driver"
        )
    return lock


# --- one Ray Tune experiment per method ---------------------------------------------------
def space_context(cfg: SweepConfig) -> SpaceContext:
    return SpaceContext(max_epochs=cfg.epochs, ref_eps=float(cfg.spec.max_eps), protocol=cfg.protocol)


def optuna_storage(cfg: SweepConfig) -> str | None:
    """``--optuna-storage`` if given (a database server on a cluster); else an Optuna journal
    file next to the Ray experiments when the sweep folder is local (a save that writes 10
    finished trials takes ~60 ms there against ~1 s with SQLite's transaction per trial:
    docs/benchmarks.md, "At scale"); a sweep begun with the former SQLite record keeps it. With
    remote storage the studies stay in memory and travel inside Ray's searcher checkpoint."""
    if cfg.optuna_storage:
        return cfg.optuna_storage
    if is_remote_uri(cfg.storage):
        return None
    folder = Path(cfg.sweep_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "optuna.db").exists():
        return f"sqlite:///{folder / 'optuna.db'}"
    return str(folder / "optuna.journal")


def make_tuner(cfg: SweepConfig, method: str, tracker: Any, space: SearchSpace):
    from ray import tune

    from orchestrator.callbacks import MlflowTrialCallback, ProgressCallback
    from orchestrator.scheduler import PenalisedASHA
    from orchestrator.searcher import TargetSearcher
    from orchestrator.trainable import make_trainable

    trainable = make_trainable(cfg)
    path = f"{cfg.sweep_dir}/{method}"
    if tune.Tuner.can_restore(path):
        print(f"[{method}] restoring {path}", flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    ctx = space_context(cfg)
    searcher = TargetSearcher(
        space,
        ctx,
        cfg.accs,
        cfg.trials,
        study_prefix=f"{cfg.name}-{method}",
        storage=optuna_storage(cfg),
        seed=cfg.seed,
        search=cfg.search,
    )
    scheduler = None
    if cfg.scheduler == "asha":
        scheduler = PenalisedASHA(
            max_epochs=cfg.epochs,
            grace_epochs=cfg.grace_epochs,
            ref_eps=ctx.ref_eps,
            penalty=cfg.penalty,
            targets=cfg.accs,
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.trials,
            max_concurrent_trials=cfg.max_concurrent,
            reuse_actors=cfg.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=method,
            storage_path=cfg.sweep_dir,
            callbacks=[
                MlflowTrialCallback(tracker, method, cfg),
                ProgressCallback(method, cfg.accs, epochs=cfg.epochs),
            ],
            # Two: the experiment state Tune saved last (every CHECKPOINT_PERIOD_S) may still name a
            # trial's previous checkpoint when the driver dies; with one kept it is already deleted
            # and the restored trial errors (tests/cluster/test_rehearsal.py hit it).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        ),
    )


def init_ray(cfg: SweepConfig) -> bool:
    """Join ``--address``/RAY_ADDRESS or start local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        ray.init(
            num_cpus=max(os.cpu_count() or 1, int(cfg.cpus_per_trial)),
            include_dashboard=False,
            log_to_driver=True,
        )
    return True


def unfinished_trials(grid: Any) -> list[str]:
    """Trials a Ctrl+C left behind: neither done (Tune marks the last result of a finished trial
    and of one the scheduler stopped ``done``) nor failed; trials never started count too."""
    return [Path(r.path).name for r in grid if r.error is None and not (r.metrics or {}).get("done")]


class SweepInterrupted(KeyboardInterrupt):
    """Ray Tune ended a method's search on SIGINT (it saves its state and returns): the sweep
    stops there too, without publishing a frontier of unfinished searches."""


# --- the whole sweep --------------------------------------------------------------------
def make_tracker(cfg: SweepConfig):
    """The sweep's tracker, its journal in the sweep folder, live for the callbacks that
    ``Tuner.restore`` unpickles in this process."""
    from orchestrator.tracking import SweepTracker, configure_client_retries
    from orchestrator.tracking.journal import journal_dir

    configure_client_retries()
    return SweepTracker(
        cfg.tracking_uri, cfg.dataset, cfg.name, cfg.sweep_id, journal_dir(cfg.sweep_dir, cfg.sweep_id)
    ).make_live()


def finished_rows(cfg: SweepConfig, tracker: Any) -> list[dict[str, Any]] | None:
    """The frontier of a sweep that already finished (its parent run was closed FINISHED and its
    frontier written), else None. A resumed finished sweep changes nothing but replays what its
    journal still holds."""
    text = read_text(f"{cfg.sweep_dir}/frontier.json")
    if text is None or not tracker.finished:
        return None
    tracker.require_server(cfg.tracking_wait, "the finished sweep's record (journal replay)")
    return json.loads(text)


def run_sweep(
    cfg: SweepConfig,
    *,
    spaces: dict[str, SearchSpace] | None = None,
    on_fit: Callable[[str, Any, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) the sweep and return the frontier rows. ``spaces`` replaces the
    registered search space of a method (tests use it to inject failing trials); ``on_fit``
    is called with (method, ResultGrid, seconds of Tuner.fit) after each method's search
    (bench.sweep measures the sweep's own overhead with it).

    The parent run is closed on every way out: FINISHED, KILLED (Ctrl+C, SIGTERM) or FAILED
    (any error, Ray failing to start included); the close goes through the journal, so an
    unreachable server never hides the error that ended the sweep."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", CHECKPOINT_PERIOD_S)
    # ...which Tune would otherwise warn about on every sync that takes longer than 5 % of it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if read_text(f"{cfg.sweep_dir}/{SWEEP_FILE}") is None:
        create_exclusive(f"{cfg.sweep_dir}/{SWEEP_FILE}", json.dumps(cfg.to_dict(), indent=2))
    tracker = make_tracker(cfg)
    done = finished_rows(cfg, tracker)
    if done is not None:
        print(f"sweep {cfg.name} finished before: its frontier, unchanged", flush=True)
        return done
    tracker.start(params={k: v for k, v in cfg.to_dict().items() if k != "resume"})
    status = "FAILED"
    try:
        rows = _search_and_publish(cfg, tracker, spaces, on_fit)
        status = "FINISHED"
        return rows
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)


def _search_and_publish(cfg: SweepConfig, tracker: Any, spaces: Any, on_fit: Any) -> list[dict[str, Any]]:
    import ray

    from orchestrator.confirm import confirm_stage
    from orchestrator.evaluation import collect_points, publish_frontier

    started = init_ray(cfg)
    stop_on_sigterm()  # again: ray.init puts in a handler of its own that ends the driver at once
    try:
        points = {}
        for method in cfg.methods:
            space = with_fixed((spaces or {}).get(method) or get_space(method), cfg.fixed_settings(method))
            tuner = make_tuner(cfg, method, tracker, space)
            t0 = time.perf_counter()
            grid = tuner.fit()
            if on_fit is not None:
                on_fit(method, grid, time.perf_counter() - t0)
            left = unfinished_trials(grid)
            if left:
                raise SweepInterrupted(
                    f"the {method} search was interrupted with {len(left)} trial(s) unfinished"
                )
            points[method] = collect_points(grid, method, cfg.epochs)
            tracker.close_unrecorded(method, {p.trial_id for p in points[method].points})
        kill_point("after-trials")
        return publish_frontier(cfg, points, tracker, confirm_stage(cfg, points, tracker))
    finally:
        if started:
            ray.shutdown()


def _sigterm_as_sigint(signum: int, frame: Any) -> None:
    """Kubernetes stops a pod with SIGTERM: the driver stops as on Ctrl+C (Ray Tune saves its
    state and returns during a search; elsewhere it is a KeyboardInterrupt), so the sweep is
    resumable and its parent run is closed KILLED."""
    os.kill(os.getpid(), signal.SIGINT)


def stop_on_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_sigint)


def main(argv: list[str] | None = None) -> int:
    from orchestrator.tracking import TrackingUnavailable

    try:
        cfg = parse_sweep_args(argv)
        lock = preflight(cfg)
    except ConfigError as e:
        print(f"python -m orchestrator.sweep: error: {e}", file=sys.stderr)
        return 2
    stop_on_sigterm()
    print(
        f"sweep {cfg.name} (id {cfg.sweep_id or 'none'}): {cfg.dataset}, targets "
        f"{', '.join(f'{a:g}' for a in cfg.accs)}, methods {', '.join(cfg.methods)}, {cfg.trials} trials "
        f"each -> {cfg.sweep_dir}",
        flush=True,
    )
    from orchestrator.evaluation import format_table

    try:
        rows = run_sweep(cfg)
    except KeyboardInterrupt as e:
        why = str(e) or "interrupted"
        print(f"sweep {cfg.name}: {why}; nothing is lost, continue with --resume {cfg.name}", file=sys.stderr)
        return 130
    except TrackingUnavailable as e:
        print(
            f"sweep {cfg.name}: {str(e).splitlines()[0]}; the trials are saved: --resume {cfg.name} "
            "publishes the frontier once MLflow answers",
            file=sys.stderr,
        )
        return EXIT_TRACKING_AWAY
    finally:
        lock.release()
    print(format_table(rows), flush=True)
    from orchestrator.confirm_report import format_confirmed

    confirmed = format_confirmed(rows)
    if confirmed:
        print(
            f"\nconfirmed over {cfg.confirm_seeds} seeds (mean ± 95 % half-width):\n{confirmed}", flush=True
        )
    print(f"MLflow: mlflow ui --backend-store-uri {cfg.tracking_uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
