"""The convergence a user watches: pure functions against hand-computed values, the parent-run
metrics written through the journal (an outage and a resume change nothing), and a short real
sweep whose metrics are read back from MLflow, printed by ``orchestrator.frontier``, and whose
Optuna record optuna-dashboard's loader reads."""

import itertools
import math
import random
from types import SimpleNamespace

import pytest

from orchestrator.convergence import (
    best_key,
    convergence_metrics,
    found_at,
    hypervolume_2d,
    hypervolume_key,
    reached,
    summary,
)
from orchestrator.pareto import TrialPoint, select_winner
from orchestrator.tracking import SweepTracker


def union_area(boxes, ref):
    """The area of the union of boxes [ref, corner], by coordinate compression: an independent
    way of computing a 2-D hypervolume."""
    xs = sorted({ref[0], *(x for x, _ in boxes)})
    ys = sorted({ref[1], *(y for _, y in boxes)})
    area = 0.0
    for (x0, x1), (y0, y1) in itertools.product(zip(xs, xs[1:]), zip(ys, ys[1:])):
        if any(x >= x1 and y >= y1 for x, y in boxes):
            area += (x1 - x0) * (y1 - y0)
    return area


def test_hypervolume_of_a_hand_computed_front():
    # boxes [0.5, 0.9] x [0, 0.1] and [0.5, 0.7] x [0, 0.3]: 0.4 * 0.1 + 0.2 * 0.2 = 0.08;
    # (0.6, 0.2) is dominated, (0.4, 0.9) is below the reference accuracy, NaN is ignored
    pts = [(0.9, 0.1), (0.7, 0.3), (0.6, 0.2), (0.4, 0.9), (math.nan, 1.0)]
    assert hypervolume_2d(pts, (0.5, 0.0)) == pytest.approx(0.08, abs=1e-12)
    assert hypervolume_2d([(0.8, 0.5)], (0.5, 0.0)) == pytest.approx(0.15, abs=1e-12)
    assert hypervolume_2d([], (0.5, 0.0)) == 0.0
    assert hypervolume_2d([(0.5, 0.4)], (0.5, 0.0)) == 0.0  # on the reference accuracy: no area


def test_hypervolume_matches_the_union_of_boxes():
    rng = random.Random(3)
    for _ in range(50):
        pts = [
            (round(rng.uniform(0.3, 1), 3), round(rng.uniform(0, 0.4), 3)) for _ in range(rng.randint(1, 9))
        ]
        inside = [(x, y) for x, y in pts if x > 0.5 and y > 0]
        assert hypervolume_2d(pts, (0.5, 0.0)) == pytest.approx(union_area(inside, (0.5, 0.0)), abs=1e-12)


def point(tid, acc, acr, epoch=3, failed=False):
    return TrialPoint(tid, acc, acr, "acert", failed=failed, epoch=epoch, budget=3)


def test_metrics_count_only_trials_that_may_win():
    pts = [
        point("a", 0.9, 0.1),
        point("b", 0.7, 0.3),
        point("early", 0.95, 0.9, epoch=1),  # stopped early: neither a winner nor on the front
        point("bad", 0.99, 0.99, failed=True),
    ]
    m = convergence_metrics("acert", pts, (0.5, 0.8, 0.97))
    assert m == {
        "best_val_acr/acert/0.5": pytest.approx(0.3),
        "best_val_acr/acert/0.8": pytest.approx(0.1),  # no entry for 0.97: nothing feasible yet
        "hypervolume/acert": pytest.approx(0.4 * 0.1 + 0.2 * 0.2),
    }
    assert m[best_key("acert", 0.5)] == select_winner(pts, 0.5).val_acr


def test_found_at_and_reached():
    best = [(1, 0.1), (2, 0.1), (3, 0.3), (4, 0.3)]
    assert found_at(best) == 3 and found_at([]) is None
    hv = [(1, 0.0), (2, 0.5), (3, 0.95), (4, 1.0)]
    assert reached(hv, 0.9) == 3 and reached([(1, 0.0)], 0.9) is None
    row = summary("ibp", (0.5, 0.8), {hypervolume_key("ibp"): hv, best_key("ibp", 0.5): best})
    assert row == {
        "method": "ibp",
        "trials": 4,
        "hypervolume": 1.0,
        "hv 90% at": 3,
        "best 0.5 at": 3,
        "best 0.8 at": None,
    }


class ListStore:
    """Applies entries to a list; raises ConnectionRefusedError while ``up`` is False."""

    def __init__(self):
        self.up, self.applied = True, []

    def apply(self, entry):
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        self.applied.append(entry)


def parent_points(store):
    return [(k, e["step"]) for e in store.applied if e["op"] == "metrics" for k in e["metrics"]]


def test_parent_metrics_wait_out_an_outage_and_a_resume_logs_no_step_twice(tmp_path):
    store = ListStore()
    t = SweepTracker("http://nowhere", "synthetic", "c", "id1", tmp_path, store=store, say=lambda _: None)
    t.start({})
    store.up = False
    t.log_parent_metrics({"hypervolume/acert": 0.0}, step=1)  # journalled, no exception
    t.log_parent_metrics({"hypervolume/acert": 0.02, "best_val_acr/acert/0.5": 0.1}, step=2)
    assert t.pending == 2
    del t  # the driver is killed during the outage
    store.up = True
    again = SweepTracker("http://nowhere", "synthetic", "c", "id1", tmp_path, store=store, say=lambda _: None)
    assert again.flush()
    # the resumed driver finishes trial 2 again (Tune had not saved it) and then trial 3
    again.log_parent_metrics({"hypervolume/acert": 0.03, "best_val_acr/acert/0.5": 0.2}, step=2)
    again.log_parent_metrics({"hypervolume/acert": 0.05, "best_val_acr/acert/0.5": 0.3}, step=3)
    assert parent_points(store) == [
        ("hypervolume/acert", 1),
        ("hypervolume/acert", 2),
        ("best_val_acr/acert/0.5", 2),
        ("hypervolume/acert", 3),
        ("best_val_acr/acert/0.5", 3),
    ]


def fake_trial(tid, status, acc, acr, epoch):
    last = {"val_acc": acc, "val_acr": acr, "epoch": epoch}
    return SimpleNamespace(
        trial_id=tid, status=status, last_result=last, config={"lr": 1e-3}, error_file=None
    )


def test_the_callback_logs_convergence_after_every_ended_trial_and_a_resume_logs_no_step_twice(tmp_path):
    from orchestrator.callbacks import MlflowTrialCallback
    from orchestrator.config import SweepConfig

    store = ListStore()
    tracker = SweepTracker("http://nowhere", "synthetic", "c", "id1", tmp_path, store=store)
    tracker.start({})
    cfg = SweepConfig(
        dataset="synthetic", accs=(0.5, 0.8), trials=3, epochs=3, name="c", storage=str(tmp_path)
    )
    cb = MlflowTrialCallback(tracker, "acert", cfg)
    a = fake_trial("a", "TERMINATED", 0.6, 0.2, 3)
    b = fake_trial("b", "TERMINATED", 0.9, 0.5, 1)  # stopped early by the scheduler
    c = fake_trial("c", "RUNNING", 0.85, 0.1, 3)  # Tune calls back before it sets the status
    cb.on_trial_complete(0, [a], a)
    cb.on_trial_complete(0, [a, b], b)
    cb.on_trial_complete(0, [a, b, c], c)
    hv3 = 0.1 * 0.2 + 0.25 * 0.1
    assert logged(store) == {
        "hypervolume/acert": [(1, 0.1 * 0.2), (2, 0.1 * 0.2), (3, hv3)],
        "best_val_acr/acert/0.5": [(1, 0.2), (2, 0.2), (3, 0.2)],
        "best_val_acr/acert/0.8": [(3, 0.1)],
    }

    # a resumed driver: Tune had not saved c as finished, so c ends again (step 3), then d ends
    tracker = SweepTracker("http://nowhere", "synthetic", "c", "id1", tmp_path, store=store)
    cb = MlflowTrialCallback(tracker, "acert", cfg)
    c.status = "TERMINATED"
    d = fake_trial("d", "TERMINATED", 0.95, 0.3, 3)
    cb.on_trial_complete(0, [a, b, c], c)
    cb.on_trial_complete(0, [a, b, c, d], d)
    got = logged(store)
    assert got["hypervolume/acert"][2:] == [(3, hv3), (4, 0.45 * 0.3)]  # step 3 once
    assert got["best_val_acr/acert/0.8"] == [(3, 0.1), (4, 0.3)]


def logged(store):
    """The parent's metric points in the order the store got them: key -> [(step, value)]."""
    got = {}
    for e in store.applied:
        if e["op"] == "metrics" and e["run"] == "parent":
            for k, v in e["metrics"].items():
                got.setdefault(k, []).append((e["step"], pytest.approx(v)))
    return got


# --- a short real sweep ------------------------------------------------------------------
TARGETS = (0.5, 0.8)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    import ray

    from orchestrator.cli import SweepConfig
    from orchestrator.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("conv")
    cfg = SweepConfig(
        dataset="synthetic", accs=TARGETS, trials=4, epochs=3, name="conv", storage=str(tmp / "sweeps"),
        tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", data_dir=str(tmp / "data"), synthetic_size=1024,
        val_acr_samples=64, test_samples=64, max_concurrent=2, max_failures=0, threads=1, scheduler="none",
        # a schedule that learns this data whatever the sampler draws (kappa and the cap stay searched)
        fixed=("lr=0.01", "batch_size=64", "std_epochs=1", "ramp_epochs=1"),
    )  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        rows = run_sweep(cfg)
    finally:
        ray.shutdown()
    return cfg, rows, tmp


def parent_and_trials(cfg):
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.reads import experiment_id, finished_parents, trial_runs_of

    c = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = experiment_id(c, cfg.dataset)
    (parent,) = finished_parents(c, exp, cfg.name)
    return c, parent, trial_runs_of(c, exp, cfg.name, "acert")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_parent_run_holds_the_convergence_per_finished_trial(finished_sweep):
    cfg, rows, _ = finished_sweep
    c, parent, trials = parent_and_trials(cfg)
    hv = [(m.step, m.value) for m in c.get_metric_history(parent.info.run_id, "hypervolume/acert")]
    assert sorted(s for s, _ in hv) == list(range(1, cfg.trials + 1))  # one point per ended trial
    values = [v for _, v in sorted(hv)]
    assert values == sorted(values)  # the front only grows
    done = [r for r in trials if r.info.status == "FINISHED" and "ended" not in r.data.tags]
    front = [(r.data.metrics["val_acc"], r.data.metrics["val_acr"]) for r in done]
    assert values[-1] == pytest.approx(hypervolume_2d(front, (min(TARGETS), 0.0)), abs=1e-12)
    for row in rows:
        hist = c.get_metric_history(parent.info.run_id, f"best_val_acr/acert/{row['target']:g}")
        if row["status"] != "ok":
            assert not hist  # never logged while no trial meets the target
            continue
        steps = [m.step for m in hist]
        assert steps == sorted(set(steps)) and set(steps) <= set(range(1, cfg.trials + 1))
        assert max(hist, key=lambda m: m.step).value == pytest.approx(row["val_acr"])
    assert rows[0]["status"] == "ok", "the fixed schedule learns this data (val_acc >= 0.5)"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_frontier_prints_the_convergence_table(finished_sweep, capsys):
    from orchestrator.frontier import main

    cfg, rows, tmp = finished_sweep
    args = ["--datasets", "synthetic", "--sweep", cfg.name, "--tracking-uri", cfg.tracking_uri]
    assert main([*args, "--out", str(tmp / "fr")]) == 0
    out = capsys.readouterr().out
    table = out.split("convergence (")[1].splitlines()
    head, line = table[1].split(), table[2].split()
    assert head[:4] == ["dataset", "sweep", "method", "trials"]
    assert line[:4] == ["synthetic", cfg.name, "acert", str(cfg.trials)]
    c, parent, _ = parent_and_trials(cfg)
    assert float(line[4]) == pytest.approx(parent.data.metrics["hypervolume/acert"], rel=1e-3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_optuna_dashboard_reads_the_sweeps_optuna_record(finished_sweep):
    """What ``optuna-dashboard <sweep folder>/optuna.journal`` serves: its WSGI app on the
    journal, asked for the studies and their trials as the browser asks."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna
    from optuna_dashboard import wsgi

    cfg, _, _ = finished_sweep
    path = f"{cfg.storage}/{cfg.name}/optuna.journal"
    app = wsgi(path)

    def get(url):
        env = {"PATH_INFO": url, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
        setup_testing_defaults(env)
        status = []
        body = b"".join(app(env, lambda s, h, *_: status.append(s)))
        assert status[0].startswith("200"), (url, status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    assert sorted(s["study_name"] for s in studies) == sorted(optuna.get_all_study_names(storage))
    assert studies, "the sweep keeps its studies in optuna.journal"
    seen = set()
    for s in studies:
        trials = get(f"/api/studies/{s['study_id']}")["trials"]
        want = optuna.load_study(study_name=s["study_name"], storage=storage).get_trials(deepcopy=False)
        assert len(trials) == len(want)
        seen |= {t["user_attrs"][i]["value"] for t in trials for i in range(len(t["user_attrs"]))
                 if t["user_attrs"][i]["key"] == "ray_trial_id"}  # fmt: skip
    _, _, runs = parent_and_trials(cfg)
    assert {r.data.tags["ray.trial_id"] for r in runs} <= seen
