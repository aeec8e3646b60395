"""Every command line the documentation shows runs, in a small variant, and makes its artifact.

The commands are read from the files (``tests/documented_commands.py``): the shell blocks of
README.md, docs/*.md and k8s/README.md, the presets of configs/ and the RayJob entrypoints of every
overlay as ``kubectl kustomize`` renders them. A new documented command is a new test here; one
this module cannot run (an unknown module, a placeholder without a substitution) fails.

What the small variant changes, and nothing else: sizes (2 trials per method, or one per target
where there are more targets, as SweepConfig requires; 1 epoch, ``--grace-epochs 1``, 20
validation ACR samples, 20 test samples, ``--limit 10`` for certify/verify, ``--train-subset`` and
``--synthetic-size`` capped, ``--quick`` for bench scripts); CPU trials (``--gpus-per-trial 0 --cpus-per-trial 1 --device cpu``,
where the presets and the cluster ask for GPUs and 4 CPUs); and where things go. The commands run
in-process, from a temporary folder that holds the defaults (``./data``, ``./sweeps``,
``./mlflow.db``), on one local Ray instance. The data sets are small learnable copies in the real
layouts (``tests/doc_data.py``; nothing is downloaded). Placeholders: DATA / D / ``/mnt/.../data``
-> ``./data``, OUT, CERT, VERIFY, RECHECK -> folders, S -> 0, NAME / ``<sweep-name>`` -> the
README's ``fmnist-readme`` sweep, an example generated name (``mnist-20261125-101500``) -> a
sweep of that data set run here with the methods asked for. The RayJob entrypoints keep
``--address auto`` (the driver runs in this process, whose Ray instance is the cluster it joins)
and ``--shared-storage``; ``/mnt/acert/sweeps`` -> a folder, ``http://mlflow:5000`` -> a SQLite
MLflow and ``--optuna-storage postgresql...`` -> a SQLite Optuna database, per entrypoint (each
overlay is its own cluster); each is run twice, as the submitter's retry does. The presets run
as README's "Paper-scale presets" command shows them (``--address auto``, ``--shared-storage``),
so that command and its preset are one run; CNN7 stays, on few images.

Not run, with the reason in ``tests/documented_commands.py``: shell lines that are not ``python
-m`` (pip, kubectl, helm, docker, kind), ``python -m venv``, ``pytest``, ``mlflow ui``,
``tests.k8s.check_manifests`` (tests/k8s/test_policy.py runs it on every overlay), ```python``
blocks, and bench scripts without flags (tests/test_bench.py runs them with ``--quick``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import documented_commands as dc
from tests.doc_data import write_all

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DOC = [c for c in dc.doc_commands() + dc.preset_commands() if dc.is_run(c)]
PRODUCES = ("orchestrator.sweep", "trainers.train", "bench.")  # run before the commands that read


def produces(cmd: dc.Command) -> bool:
    return cmd.module.startswith(PRODUCES) and "--resume" not in cmd.args


@dataclasses.dataclass
class Result:
    argv: list[str]
    rc: int
    seconds: float
    new_sweeps: list[str]
    stdout: str = ""


class Runner:
    """Runs each small variant once (a command documented twice, or a preset that README shows,
    runs once) and keeps what it made."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.storage = str(cwd / "sweeps")
        self.tracking_uri = f"sqlite:///{cwd / 'mlflow.db'}"
        self.done: dict[tuple, Result] = {}

    def where(self, cmd: dc.Command, storage=None, tracking_uri=None, optuna=None) -> dc.Where:
        return dc.Where(
            self.cwd,
            storage or self.storage,
            tracking_uri or self.tracking_uri,
            optuna,
            lambda tok: self.sweep_for(tok, cmd, storage or self.storage),
        )

    def sweep_for(self, tok: str, cmd: dc.Command, storage: str) -> str:
        if tok in dc.NAME_PLACEHOLDERS:
            return dc.NAMED_SWEEP
        dataset = tok.rsplit("-", 2)[0]
        methods = set((cmd.flag("--methods") or "").split(",")) - {""}
        for path in sorted(Path(storage).glob("*/sweep.json"), reverse=True):
            saved = json.loads(path.read_text())
            if dc.GENERATED_NAME.match(saved["name"]) and saved["dataset"] == dataset:
                if methods <= set(saved["methods"]):
                    return saved["name"]
        raise AssertionError(f"{cmd.source}: no sweep of {dataset} with methods {sorted(methods)} ran before")

    def sweeps(self, storage: str) -> set[str]:
        return {p.parent.name for p in Path(storage).glob("*/sweep.json")}

    def run(self, cmd: dc.Command, where: dc.Where, again: bool = False) -> Result:
        argv = dc.small(cmd, where)
        key = (cmd.module, tuple(argv), again)
        if key not in self.done:
            before = self.sweeps(where.storage)
            t0 = time.perf_counter()
            rc, out = self._call(cmd.module, argv)
            new = sorted(self.sweeps(where.storage) - before)
            self.done[key] = Result(argv, rc, time.perf_counter() - t0, new, out)
            print(f"{cmd.id}: rc {rc} in {self.done[key].seconds:.1f} s: {cmd.module} {' '.join(argv)}")
        return self.done[key]

    def _call(self, module: str, argv: list[str]) -> tuple[int, str]:
        if module.startswith("bench."):  # scripts that set global state; a second each
            proc = subprocess.run(
                [sys.executable, "-m", module, *argv], cwd=self.cwd, capture_output=True, text=True
            )
            return proc.returncode, proc.stdout + proc.stderr[-2000:]
        try:
            return importlib.import_module(module).main(argv) or 0, ""
        except SystemExit as e:  # argparse's exit 2 on a bad flag
            return e.code if isinstance(e.code, int) else 1, ""

    def produce_for(self, cmd: dc.Command) -> None:
        """Run the documented commands that make what ``cmd`` reads (a consumer of a sweep:
        the sweeps of its data sets or its name; of a checkpoint: the single run)."""
        wanted = dc.needs(cmd)
        for other in DOC:
            if produces(other) and (other.module in wanted or wanted & dc.made_by(other)):
                self.run(other, self.where(other))


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import ray
    import torch

    cwd = tmp_path_factory.mktemp("documented")
    write_all(cwd / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        # Tiny models, two processes at a time on two cores: one thread each. OpenMP's default (a
        # thread per core) in every process makes a loaded machine many times slower (verify's
        # subprocess: 60 s instead of 4 s).
        mp.setenv("OMP_NUM_THREADS", "1")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        ray.init(num_cpus=2, include_dashboard=False)
        try:
            yield Runner(cwd)
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)


def mlflow_runs(uri: str, dataset: str, name: str, role: str) -> list:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import TAG_ROLE, TAG_SWEEP, experiment_name

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment_name(dataset))
    flt = f"tags.`{TAG_SWEEP}` = '{name}' and tags.`{TAG_ROLE}` = '{role}'"
    return c.search_runs([exp.experiment_id], flt, run_view_type=ViewType.ALL, max_results=1000)


def check_sweep(res: Result, storage: str, uri: str, name: str | None = None) -> dict:
    """A finished sweep: its folder, a frontier row per method and target, every trial in MLflow."""
    assert res.rc == 0, f"exit {res.rc}: {' '.join(res.argv)}"
    if name is None:
        assert len(res.new_sweeps) == 1, f"one new sweep folder expected, got {res.new_sweeps}"
        name = res.new_sweeps[0]
    folder = Path(storage) / name
    saved = json.loads((folder / "sweep.json").read_text())
    rows = json.loads((folder / "frontier.json").read_text())
    assert {(r["method"], r["target"]) for r in rows} == {
        (m, a) for m in saved["methods"] for a in saved["accs"]
    }
    assert all(r["status"] in ("ok", "infeasible") for r in rows)
    (parent,) = mlflow_runs(uri, saved["dataset"], name, "parent")
    assert parent.info.status == "FINISHED"
    trials = mlflow_runs(uri, saved["dataset"], name, "trial")
    assert len(trials) == saved["trials"] * len(saved["methods"])
    return saved


@pytest.mark.parametrize("cmd", DOC, ids=lambda c: c.id)
def test_documented_command_runs_and_makes_its_artifact(runner, cmd):
    if not produces(cmd):
        runner.produce_for(cmd)
    res = runner.run(cmd, runner.where(cmd))
    assert res.rc == 0, (
        f"{cmd.source}: exit {res.rc}: {cmd.module} {' '.join(res.argv)}\n{res.stdout[-2000:]}"
    )
    check_artifact(runner, cmd, res)


def check_artifact(runner: Runner, cmd: dc.Command, res: Result) -> None:
    argv = res.argv
    if cmd.module == "orchestrator.sweep" and "--resume" in argv:
        name = dc.flag_value(argv, "--resume")
        assert res.new_sweeps == []
        saved = json.loads((Path(runner.storage) / name / "sweep.json").read_text())
        assert len(mlflow_runs(runner.tracking_uri, saved["dataset"], name, "parent")) == 1
    elif cmd.module == "orchestrator.sweep":
        check_sweep(res, runner.storage, runner.tracking_uri, dc.flag_value(argv, "--name"))
    elif cmd.module == "orchestrator.frontier":
        out = Path(dc.flag_value(argv, "--out") or "frontier")
        for suffix in (".png", ".html"):
            assert (runner.cwd / out).with_suffix(suffix).stat().st_size > 0
    elif cmd.module == "orchestrator.recheck":
        report = json.loads((Path(dc.flag_value(argv, "--output-dir")) / "recheck.json").read_text())
        assert report["ok"] and report["winners"]
    elif cmd.module == "trainers.train":
        assert (Path(dc.flag_value(argv, "--output-dir")) / "model.pt").is_file()
    elif cmd.module in ("trainers.certify", "trainers.verify"):
        summary = json.loads((Path(dc.flag_value(argv, "--output-dir")) / "summary.json").read_text())
        assert 0 < summary["n"] <= dc.LIMIT and "acr" in summary and "clean_acc" in summary
    elif cmd.module.startswith("bench."):
        lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
        assert json.loads(lines[0])["benchmark"] == cmd.module.split(".", 1)[1]
    else:
        raise AssertionError(f"{cmd.source}: no artifact check for {cmd.module}")


@pytest.mark.parametrize("folder", dc.kustomizations())
def test_rayjob_entrypoint_runs_and_its_retry_resumes(runner, folder):
    from tests.k8s.kubectl import render, require_kubectl

    cmds = [
        c for c in dc.entrypoint_commands(folder, render(dc.ROOT / folder, require_kubectl())) if dc.is_run(c)
    ]
    for cmd in cmds:
        # one cluster per entrypoint text: its volume, MLflow and PostgreSQL
        home = runner.cwd / f"rayjob-{hashlib.sha1(' '.join(cmd.args).encode()).hexdigest()[:8]}"
        home.mkdir(exist_ok=True)
        where = runner.where(
            cmd, str(home / "sweeps"), f"sqlite:///{home / 'mlflow.db'}", f"sqlite:///{home / 'optuna.db'}"
        )
        name = cmd.flag("--name")
        first = runner.run(cmd, where)
        saved = check_sweep(first, where.storage, where.tracking_uri, name)
        retry = runner.run(cmd, where, again=True)
        assert retry.rc == 0 and retry.new_sweeps == []
        trials = mlflow_runs(where.tracking_uri, saved["dataset"], name, "trial")
        assert len(trials) == saved["trials"] * len(saved["methods"])


def test_every_documented_command_is_found_and_has_a_runner():
    """The extraction finds what the files show (a parser that found nothing would run nothing);
    each ``python -m`` line is run or skipped for a stated reason; each placeholder of a run
    command has a substitution."""
    shown = dc.doc_commands()
    modules = {c.module for c in DOC}
    assert {
        "orchestrator.sweep",
        "orchestrator.frontier",
        "orchestrator.recheck",
        "trainers.train",
    } <= modules
    assert {"trainers.certify", "trainers.verify", "bench.search"} <= modules
    assert {c.source for c in DOC} >= {
        p.relative_to(dc.ROOT).as_posix() for p in (dc.ROOT / "configs").glob("*.json")
    }
    assert any("--resume" in c.args for c in DOC) and any("--config" in c.args for c in shown)
    bench = (dc.ROOT / "tests" / "test_bench.py").read_text()
    for cmd in shown:
        if not dc.is_run(cmd):
            assert cmd.module in dc.SKIPPED_MODULES or f'"{cmd.module.split(".", 1)[1]}"' in bench, cmd
    where = dc.Where(Path("/w"), "/w/sweeps", "sqlite:////w/m.db", "sqlite:////w/o.db", lambda tok: "a-sweep")
    for cmd in DOC:
        argv = dc.small(cmd, where)
        assert not [t for t in argv if dc.looks_like_placeholder(t)], (cmd.source, argv)


def test_extraction_joins_continuations_and_splits_chains():
    text = "x\n```bash\npython -m orchestrator.sweep --a 1 \\\n    --b 2  # note\nkubectl get pods\n"
    text += "python3 -m venv .venv && .venv/bin/python -m bench.search [--x y|cpu] ...\n```\n"
    text += "```python\npython -m trainers.train\n```\n"
    cmds = [c for n, line in dc.logical_lines(text) for c in dc.commands_in(line)]
    assert cmds == [
        ("orchestrator.sweep", ("--a", "1", "--b", "2")),
        ("venv", (".venv",)),
        ("bench.search", ("[--x", "y|cpu]", "...")),
    ]
    assert dc.expand(cmds[2][1]) == ["--x", "cpu"]
