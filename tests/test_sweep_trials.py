"""Whole sweeps through ``orchestrator.sweep.main`` on local Ray (2 CPUs) and synthetic data, for
how single trials end: with --fixed settings, diverged, hung. What they leave is read from the Ray
Tune experiment folder (``<storage>/<name>/<method>/<trial>/``), the record the sweep itself reads
back."""

import json
from pathlib import Path

import pytest

from orchestrator.sweep import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def argv(tmp: Path, name: str, *extra: str) -> list[str]:
    return [
        "--dataset",
        "synthetic",
        "--accs",
        "0.5",
        "--trials",
        "2",
        "--epochs",
        "1",
        "--name",
        name,
        "--storage",
        str(tmp / "sweeps"),
        "--tracking-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--data-dir",
        str(tmp / "data"),
        "--synthetic-size",
        "256",
        "--val-acr-samples",
        "20",
        "--threads",
        "1",
        "--no-register",
        *extra,
    ]


def trials(tmp: Path, name: str, method: str = "acert") -> dict[str, dict]:
    """Per trial folder: its config (params.json) and every result it reported (result.json)."""
    out = {}
    for folder in sorted((tmp / "sweeps" / name / method).glob("*/")):
        if (folder / "params.json").is_file():
            lines = (folder / "result.json").read_text().splitlines()
            out[folder.name] = {
                "config": json.loads((folder / "params.json").read_text()),
                "results": [json.loads(line) for line in lines if line.strip()],
            }
    return out


def test_a_sweep_with_fixed_settings_finishes(ray_session, tmp_path):
    """--fixed (every preset in configs/ uses it): the searcher, with its fixed space, is pickled
    at every save of the experiment, and every trial trains with the fixed value."""
    assert main(argv(tmp_path, "fixed", "--fixed", "lr=0.001")) == 0
    done = trials(tmp_path, "fixed")
    assert len(done) == 2
    for trial in done.values():
        assert trial["config"]["lr"] == 0.001
        assert trial["results"][-1]["done"] and trial["results"][-1]["epoch"] == 1
