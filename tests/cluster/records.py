"""What a rehearsed sweep left behind, read back: its MLflow runs, Tune's saved experiment state,
the Optuna studies; and the check that every trial is there once (``check_records``)."""

from __future__ import annotations

import json
from pathlib import Path

# Ray Tune's error when a restored trial's checkpoint was deleted after the experiment state that
# names it was saved; orchestrator/sweep.py keeps two checkpoints per trial so that it cannot
# happen (check_records fails on it).
CHECKPOINT_RACE = "Could not recover from checkpoint as it does not exist on storage anymore"


def trial_runs(uri: str, dataset: str):
    """(client, the trial runs of the data set's experiment, deleted or not)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(f"acert-sweep-{dataset}")
    if exp is None:
        return c, []
    return c, list(
        c.search_runs([exp.experiment_id], "tags.`sweep.role` = 'trial'", run_view_type=ViewType.ALL)
    )


def finished_trials(uri: str, dataset: str) -> dict[str, list[tuple[int, float]]]:
    """{trial id: its val_acr history} of the trials MLflow records FINISHED."""
    c, runs = trial_runs(uri, dataset)
    return {r.data.tags["ray.trial_id"]: history(c, r) for r in runs if r.info.status == "FINISHED"}


def history(c, run) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "val_acr")]


def saved_trials(experiment: Path) -> dict[str, dict]:
    """{trial id: {"status", "num_failures"}} in Tune's newest saved experiment state: what a
    restore starts from."""
    newest = max(experiment.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    out = {}
    for trial, run_state in json.loads(newest.read_text())["trial_data"]:
        trial = json.loads(trial)
        out[trial["trial_id"]] = {
            "status": trial["status"],
            "num_failures": json.loads(run_state)["num_failures"],
        }
    return out


def saved_after(experiment: Path, wall_time: float) -> bool:
    """Whether Tune saved its experiment state (experiment_state-*.json) after ``wall_time``."""
    return any(p.stat().st_mtime > wall_time for p in experiment.glob("experiment_state-*.json"))


def epochs_rerun(experiment: Path) -> int:
    """Epochs that a restored trial reported a second time (its result.json repeats them)."""
    rerun = 0
    for result in experiment.glob("*/result.json"):
        steps = [
            json.loads(line).get("training_iteration") for line in result.read_text().splitlines() if line
        ]
        rerun += len(steps) - len(set(steps))
    return rerun


def check_records(rh, before: dict, *, name: str, method: str, dataset: str, budget: int) -> dict[str, int]:
    """Every trial once in MLflow and in Optuna, finished ones untouched, the frontier files and
    each winner's model version once; the Optuna studies in PostgreSQL, no SQLite beside them.

    Two resume faults that once hit trials in flight at a head kill are checked for explicitly
    (fixed in orchestrator/sweep.py and orchestrator/callbacks.py; both depend on where in Tune's
    2 s between saved states the kill falls):

    - ``trials_lost_to_the_checkpoint_race``: a checkpoint written after the last saved
      experiment state deleted the one that state names, and the restored trial could not start
      (``CHECKPOINT_RACE``); two checkpoints are kept per trial now;
    - ``epochs_logged_twice``: an epoch logged to MLflow after the last saved state, trained
      again after the restore, was logged a second time (same step); logged steps are skipped now."""
    c, runs = trial_runs(rh.tracking_uri, dataset)
    recorded = [r for r in runs if r.info.status != "KILLED"]  # KILLED: asked for, lost before Ray saved it
    ids = [r.data.tags["ray.trial_id"] for r in recorded]
    assert len(ids) == len(set(ids)) == budget, sorted(ids)
    failed = [r for r in recorded if r.info.status == "FAILED"]
    assert all(r.info.status in ("FINISHED", "FAILED") for r in recorded)
    by_id = {r.data.tags["ray.trial_id"]: r for r in recorded}
    for trial_id, hist in before.items():
        assert by_id[trial_id].info.status == "FINISHED", (
            f"finished trial {trial_id} is now {by_id[trial_id].info.status}"
        )
        assert history(c, by_id[trial_id]) == hist, f"finished trial {trial_id} was run again"
    twice = 0
    for r in recorded:
        steps = [s for s, _ in history(c, r)]
        twice += len(steps) - len(set(steps))
    race = [r for r in failed if CHECKPOINT_RACE in r.data.tags.get("failure_reason", "")]
    faults = {"trials_lost_to_the_checkpoint_race": len(race), "epochs_logged_twice": twice}
    assert not any(faults.values()), f"trials in flight at the fault were hurt: {faults}"
    assert not failed, [r.data.tags.get("failure_reason") for r in failed]

    (parent,) = c.search_runs([recorded[0].info.experiment_id], "tags.`sweep.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["download"] == "False" and parent.data.params["shared_storage"] == "True"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {
        "frontier.csv",
        "frontier.json",
        "frontier.html",
        "frontier.png",
    }
    proxied = Path(rh.endpoints.path("/mnt/mlflow-artifacts"))
    assert list(proxied.rglob("frontier.json")), (
        "artifacts did not go through the server's --artifacts-destination"
    )
    sweep_dir = Path(rh.endpoints.path("/mnt/acert/sweeps")) / name
    rows = [r for r in json.loads((sweep_dir / "frontier.json").read_text()) if r["status"] == "ok"]
    assert rows, "the synthetic targets are low: some must be feasible"
    for row in rows:
        versions = c.search_model_versions(f"name='{row['registered_model']}'")
        assert len(versions) == 1 and versions[0].run_id == parent.info.run_id, row["registered_model"]

    check_optuna(rh, parent.data.params["optuna_storage"], sweep_dir, f"{name}-{method}-acc", set(ids))
    return faults


def check_optuna(rh, storage: str, sweep_dir: Path, prefix: str, ids: set[str]) -> None:
    """The studies in PostgreSQL (none beside the sweep), named ``prefix...``, each trial once."""
    import optuna

    assert storage.startswith("postgresql+psycopg2://127.0.0.1:") and not list(sweep_dir.glob("optuna.*"))
    user, password = rh.secrets["acert-postgres"]["username"], rh.secrets["acert-postgres"]["password"]
    url = storage.replace("://", f"://{user}:{password}@", 1)
    optuna_ids, states = [], {}
    for study_name in optuna.get_all_study_names(storage=url):
        assert study_name.startswith(prefix), study_name
        trials = optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)
        states[study_name] = [(t.user_attrs.get("ray_trial_id"), t.state.name) for t in trials]
        optuna_ids += [
            t.user_attrs["ray_trial_id"] for t in trials if t.state != optuna.trial.TrialState.FAIL
        ]
    assert len(optuna_ids) == len(set(optuna_ids)), f"a trial is twice in the Optuna record: {states}"
    assert set(optuna_ids) == ids, f"the Optuna record {states} is not MLflow's {sorted(ids)}"
