"""The MLflow record against a real tracking store (SQLite in a temporary folder).

The registered-model test logs a real ``trainers.models`` network and loads it back in a fresh
Python that cannot import this project, as a user of the model registry would.
"""

import pytest

from orchestrator.mlflow_log import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    SweepTracker,
    experiment_name,
)


@pytest.fixture
def tracking_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def client_of(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_new_experiment_is_a_training_experiment(tracking_uri):
    tracker = SweepTracker(tracking_uri, "synthetic", "s1")
    tracker.parent_run()
    exp = client_of(tracking_uri).get_experiment_by_name(experiment_name("synthetic"))
    assert exp.experiment_id == tracker.experiment_id
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_existing_experiment_without_the_kind_gets_it(tracking_uri):
    c = client_of(tracking_uri)
    exp_id = c.create_experiment(experiment_name("mnist"))  # made by an older version: no kind
    assert EXPERIMENT_KIND_TAG not in c.get_experiment(exp_id).tags
    assert SweepTracker(tracking_uri, "mnist", "s2").experiment_id == exp_id
    assert c.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_a_kind_chosen_by_the_user_is_kept(tracking_uri):
    c = client_of(tracking_uri)
    exp_id = c.create_experiment(experiment_name("mnist"), tags={EXPERIMENT_KIND_TAG: "finetuning"})
    assert SweepTracker(tracking_uri, "mnist", "s3").experiment_id == exp_id
    assert c.get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == "finetuning"
