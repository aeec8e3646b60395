"""The frontier pictures: the interactive HTML is an offline plotly figure with a trace group per
method and the configuration in every hover label; the PNG is still drawn.

The panels are built the way the sweep builds them: TrialPoints with Ray-style configs (and
MLflow-style string params, as ``python -m orchestrator.frontier`` reads them), winners chosen
by ``select_winner`` and frontier rows carrying the test figures.
"""

import json
import math
import re

import pytest

from orchestrator.pareto import TrialPoint, select_winner
from orchestrator.plots import (
    ACC_TITLE,
    ACR_TITLE,
    PLOT_ID,
    Panel,
    front_line,
    frontier_figure,
    write_html,
    write_png,
)
from trainers import metrics as M

TARGETS = (0.7, 0.75, 0.9)


def trial(method, i, acc, acr, **config):
    base = {"dataset": "mnist", "data_dir": "/data", "seed": 0, "target": 0.7, "search_phase": 0}
    return TrialPoint(f"{method[:2]}{i:04d}", acc, acr, method, {**base, **config})


def make_panel(title="mnist"):
    acert = [
        trial("acert", 0, 0.72, 0.12, lr=0.001, kappa=0.25),
        trial("acert", 1, 0.80, 0.09, lr=0.002, kappa=0.5),
        trial("acert", 2, 0.60, 0.20, lr=0.003, kappa=0.0),
        trial("acert", 3, 0.65, 0.05, lr=0.004, kappa=0.9),
        trial("acert", 4, math.nan, math.nan, lr=1e20, kappa=0.1),  # diverged: not plotted
        TrialPoint("ac0005", 0.99, 0.5, "acert", {"lr": 0.1}, failed=True),  # failed: not plotted
    ]
    # as read back from MLflow: every param is a string
    ibp = [
        trial("ibp", 0, 0.76, 0.07, lr="0.00123456789", eps_train="0.3"),
        trial("ibp", 1, 0.70, 0.06, lr="0.0005", eps_train="0.2"),
    ]
    points = {"acert": acert, "ibp": ibp}
    rows = []
    for method, pts in points.items():
        for t in TARGETS:
            w = select_winner(pts, t)
            row = {"dataset": title, "method": method, "target": t}
            if w is None:
                rows.append({**row, "status": "infeasible"})
                continue
            tuned = {k: v for k, v in w.config.items() if k not in ("dataset", "data_dir")}
            rows.append(
                {
                    **row,
                    "status": "ok",
                    "trial_id": w.trial_id,
                    M.VAL_ACC: w.val_acc,
                    M.VAL_ACR: w.val_acr,
                    M.TEST_ACC: w.val_acc - 0.01,
                    M.TEST_ACR: w.val_acr * 0.9,
                    M.cert_acc_key(0.1): 0.5,
                    "config": tuned,
                }
            )
    return Panel(title, points, rows, TARGETS)


def plotted_figure(page):
    """The data and layout handed to Plotly.newPlot in the page."""
    call = re.search(r"Plotly\.newPlot\(\s*" + re.escape(json.dumps(PLOT_ID)) + r",\s*", page)
    assert call, "no Plotly.newPlot call for the frontier plot"
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(page, call.end())
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    return data, layout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots") / "frontier.html"
    write_html([make_panel("mnist"), make_panel("cifar10")], path)
    return path.read_text()


def test_html_embeds_plotly_and_needs_no_network(page):
    assert not re.search(r"<script[^>]*\bsrc=", page)  # no CDN
    assert re.search(r"plotly\.js v\d", page)  # the library itself is inline
    assert "<table>" in page and "ac0001" in page  # the frontier table is kept under the plot


def test_one_legend_entry_per_method_and_every_trace_in_its_methods_group(page):
    data, layout = plotted_figure(page)
    assert [t["name"] for t in data if t.get("showlegend", True)] == ["acert", "ibp"]
    assert {t["legendgroup"] for t in data} == {"acert", "ibp"}
    # per panel and method: trials, Pareto front, winners
    assert len(data) == 2 * 2 * 3
    assert {t["xaxis"] for t in data if "xaxis" in t} <= {"x", "x2"}
    assert layout["xaxis"]["title"]["text"] == layout["xaxis2"]["title"]["text"] == ACC_TITLE
    assert layout["yaxis"]["title"]["text"] == ACR_TITLE
    assert layout["xaxis"]["ticks"] == "outside"
    assert [a["text"] for a in layout["annotations"][:2]] == ["mnist", "cifar10"]  # subplot titles


def test_trial_hover_carries_the_trial_and_its_tuned_config(page):
    data, _ = plotted_figure(page)
    acert, ibp = (next(t for t in data if t["name"] == m) for m in ("acert", "ibp"))
    assert len(acert["x"]) == 4  # the diverged and the failed trial are not drawn
    hover = dict(zip(acert["x"], acert["text"]))
    assert "trial ac0000" in hover[0.72] and "lr = 0.001" in hover[0.72] and "kappa = 0.25" in hover[0.72]
    assert "data_dir" not in hover[0.72] and "search_phase" not in hover[0.72]
    assert "searched for target 0.7" in hover[0.72]
    ibp_hover = dict(zip(ibp["x"], ibp["text"]))[0.76]
    assert "lr = 0.001235" in ibp_hover and "eps_train = 0.3" in ibp_hover  # MLflow strings, rounded
    assert all(t["hovertemplate"] == "%{text}<extra></extra>" for t in data if "text" in t)


def test_winners_are_stars_at_their_test_figures(page):
    data, _ = plotted_figure(page)
    stars = next(t for t in data if t["name"] == "acert winners (test)")
    assert stars["marker"]["symbol"] == "star"
    # ac0000 (0.72) wins 0.7; ac0001 (0.80) wins 0.75; nothing reaches 0.9
    assert stars["x"] == pytest.approx([0.71, 0.79]) and stars["y"] == pytest.approx([0.108, 0.081])
    assert "winner for target 0.7" in stars["text"][0] and "trial ac0000" in stars["text"][0]
    assert "cert_acc@0.1 0.5000" in stars["text"][0] and "kappa = 0.25" in stars["text"][0]
    ibp_stars = next(t for t in data if t["name"] == "ibp winners (test)")
    assert len(ibp_stars["x"]) == 1  # ib0000 wins both 0.7 and 0.75: one star, both targets
    assert "winner for target 0.7, 0.75" in ibp_stars["text"][0]


def test_pareto_front_and_targets(page):
    data, layout = plotted_figure(page)
    front = next(t for t in data if t["name"] == "acert Pareto front (val)")
    acert = make_panel().points["acert"]
    assert list(zip(front["x"], front["y"])) == front_line(acert)
    assert front["line"]["shape"] == "vh"
    lines = [s for s in layout["shapes"] if s["type"] == "line"]
    assert sorted((s["x0"], s["xref"]) for s in lines) == sorted(
        (t, ax) for t in TARGETS for ax in ("x", "x2")
    )
    assert all(s["x0"] == s["x1"] and s["line"]["dash"] == "dash" for s in lines)
    infeasible = [a for a in layout["annotations"] if a.get("text") == "0.9"]
    assert infeasible and "acert: no feasible trial" in infeasible[0]["hovertext"]


def test_the_figure_can_be_stored_by_mlflow_log_figure(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("plots", artifact_location=str(tmp_path / "art")))
    client.log_figure(run.info.run_id, frontier_figure([make_panel()]), "frontier_plotly.html")
    stored = tmp_path / "art" / run.info.run_id / "artifacts" / "frontier_plotly.html"
    assert "acert winners (test)" in stored.read_text()


def test_png_is_still_drawn(tmp_path):
    write_png([make_panel("mnist"), make_panel("cifar10")], tmp_path / "frontier.png")
    data = (tmp_path / "frontier.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_frontier_command_draws_a_sweep_from_mlflow_alone(tmp_path, capsys):
    """``python -m orchestrator.frontier`` on a sweep recorded by SweepTracker: the trial points
    come from the child runs (string params), the winners from the parent's frontier.json."""
    from orchestrator import frontier
    from orchestrator.tracking import SweepTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    panel = make_panel("synthetic")
    tracker = SweepTracker(uri, "synthetic", "fr-test", journal_dir=tmp_path / "journal")
    tracker.start({})
    for method, pts in panel.points.items():
        for p in pts:
            tracker.trial(p.trial_id, method, p.config)
            tracker.log_trial_metrics(p.trial_id, {M.VAL_ACC: p.val_acc, M.VAL_ACR: p.val_acr}, step=1)
            tracker.end_trial(p.trial_id, status="FAILED" if p.failed else "FINISHED")
    (tmp_path / "frontier.json").write_text(json.dumps(panel.rows))
    tracker.log_artifact(tmp_path / "frontier.json")
    tracker.finish()

    out = tmp_path / "fr"
    assert frontier.main(["--datasets", "synthetic", "--tracking-uri", uri, "--out", str(out)]) == 0
    assert "acert" in capsys.readouterr().out
    assert (tmp_path / "fr.png").stat().st_size > 10_000
    data, layout = plotted_figure((tmp_path / "fr.html").read_text())
    assert [t["name"] for t in data if t.get("showlegend", True)] == ["acert", "ibp"]
    acert = next(t for t in data if t["name"] == "acert")
    assert len(acert["x"]) == 4  # the diverged (NaN) and the failed run are not drawn
    hover = dict(zip(acert["x"], acert["text"]))[0.72]
    assert "trial ac0000" in hover and "kappa = 0.25" in hover and "data_dir" not in hover
    assert layout["annotations"][0]["text"] == "synthetic"
