"""Bad input: one line naming the value, exit code 2, before Ray or MLflow do anything."""

import json
import socket
import subprocess
import sys

import pytest

from orchestrator import sweep
from orchestrator.cli import SweepConfig, build_parser, parse_sweep_args

BASE = ["--dataset", "synthetic", "--accs", "0.5,0.7"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as e:
        code = sweep.main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err
    return e.value.code, err


CASES = [
    (["--dataset", "imagenet", "--accs", "0.5"], "--dataset 'imagenet'"),
    (["--dataset", "mnist", "--accs", "1.5"], "--accs 1.5"),
    (["--dataset", "mnist", "--accs", "abc"], "--accs 'abc'"),
    (["--dataset", "mnist", "--accs", ""], "--accs ''"),
    (["--dataset", "mnist", "--accs", "0.7,,0.8"], "--accs '0.7,,0.8'"),
    (["--dataset", "mnist", "--accs", "0.7,0.8,0.7"], "--accs '0.7': duplicate"),
    (["--dataset", "mnist", "--accs", "0.7", "--trials", "0"], "--trials 0"),
    (["--dataset", "mnist", "--accs", "0.7,0.8", "--trials", "1"], "--trials 1"),
    (["--dataset", "mnist", "--accs", "0.7", "--gpus-per-trial", "-1"], "--gpus-per-trial -1.0"),
    (["--dataset", "mnist", "--accs", "0.7", "--methods", "sabr"], "--methods 'sabr'"),
    (["--dataset", "mnist", "--accs", "0.7", "--scheduler", "pbt"], "--scheduler 'pbt'"),
    (["--dataset", "mnist", "--accs", "0.7", "--name", "a/b"], "--name 'a/b'"),
    (["--dataset", "mnist", "--accs", "nan"], "--accs nan"),
    (["--accs", "0.7"], "--dataset"),
    (["--resume", "nope"], "--resume 'nope': no sweep of that name"),
]


@pytest.mark.parametrize("argv,needle", CASES)
def test_bad_flags(argv, needle, in_tmp, capsys):
    code, err = run_main(argv, capsys)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1, err  # one line


def test_unreachable_tracking_server(in_tmp, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    code, err = run_main([*BASE, "--tracking-uri", uri], capsys)
    assert code == 2 and f"--tracking-uri '{uri}': server unreachable" in err and err.count("\n") == 1


def test_file_store_uri_is_refused(in_tmp, capsys):
    code, err = run_main([*BASE, "--tracking-uri", str(in_tmp / "mlruns")], capsys)
    assert code == 2 and "file stores are refused" in err


def test_missing_data_with_no_download(in_tmp, capsys):
    empty = in_tmp / "nodata"
    empty.mkdir()
    code, err = run_main(
        ["--dataset", "mnist", "--accs", "0.9", "--no-download", "--data-dir", str(empty)], capsys
    )
    assert code == 2 and f"--data-dir '{empty}'" in err and err.count("\n") == 1


def test_existing_name_needs_resume(in_tmp, capsys):
    (in_tmp / "sweeps" / "taken").mkdir(parents=True)
    (in_tmp / "sweeps" / "taken" / "sweep.json").write_text("{}")
    code, err = run_main([*BASE, "--name", "taken"], capsys)
    assert code == 2 and "--resume taken" in err


def test_bad_input_never_starts_ray(in_tmp):
    """The real entry point, in a fresh interpreter: fails fast and leaves no Ray session."""
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--dataset", "mnist", "--accs", "1.5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=in_tmp,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == "python -m orchestrator.sweep: error: invalid --accs 1.5: each target accuracy must lie in (0, 1)"
    )
    assert "ray" not in out.stdout.lower()
    assert not (in_tmp / "sweeps").exists()


def test_good_flags_round_trip(in_tmp):
    cfg = parse_sweep_args(
        [
            *BASE,
            "--accs",
            "0.8,0.6",
            "--methods",
            "acert,ibp",
            "--gpus-per-trial",
            "0.25",
            "--name",
            "n1",
            "--tracking-uri",
            "sqlite:///x.db",
        ]
    )
    assert cfg.accs == (0.6, 0.8)  # sorted: lower targets warm-start higher ones
    assert cfg.methods == ("acert", "ibp") and cfg.gpus_per_trial == 0.25
    assert cfg.storage == str(in_tmp / "sweeps") and cfg.sweep_dir == str(in_tmp / "sweeps" / "n1")
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_default_tracking_uri_is_absolute_sqlite(in_tmp, monkeypatch):
    assert parse_sweep_args(BASE).tracking_uri == f"sqlite:///{in_tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    cfg = parse_sweep_args(BASE)
    assert cfg.tracking_uri == "http://mlflow:5000" and cfg.address == "auto"


def test_resume_reads_the_saved_config(in_tmp):
    cfg = parse_sweep_args([*BASE, "--name", "r1", "--trials", "5"])
    folder = in_tmp / "sweeps" / "r1"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(cfg.to_dict()))
    back = parse_sweep_args(["--resume", "r1", "--address", "auto"])
    assert back.resume and back.trials == 5 and back.address == "auto"
    assert back.replace(resume=False, address=None) == cfg


def test_parser_knows_the_documented_flags():
    flags = {s for a in build_parser()._actions for s in a.option_strings}
    for f in (
        "--dataset",
        "--accs",
        "--methods",
        "--trials",
        "--epochs",
        "--data-dir",
        "--no-download",
        "--name",
        "--resume",
        "--storage",
        "--tracking-uri",
        "--address",
        "--cpus-per-trial",
        "--gpus-per-trial",
        "--max-concurrent",
        "--scheduler",
        "--seed",
        "--max-failures",
        "--device",
    ):
        assert f in flags


def test_resume_if_exists_continues_a_named_sweep_or_starts_it(in_tmp):
    fresh = parse_sweep_args(["--dataset", "synthetic", "--accs", "0.9", "--name", "job", "--resume-if-exists"])
    assert not fresh.resume and fresh.name == "job"
    folder = in_tmp / "sweeps" / "job"
    folder.mkdir(parents=True)
    saved = fresh.replace(trials=7)
    (folder / "sweep.json").write_text(json.dumps(saved.to_dict()))
    # a restarted job runs the same command line: it resumes with the saved settings
    back = parse_sweep_args(["--dataset", "synthetic", "--accs", "0.9", "--name", "job", "--resume-if-exists",
                             "--address", "auto"])
    assert back.resume and back.trials == 7 and back.address == "auto"


def test_resume_if_exists_needs_a_name(in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        parse_sweep_args(["--dataset", "synthetic", "--accs", "0.9", "--resume-if-exists"])
    assert e.value.code == 2 and "needs a fixed --name" in capsys.readouterr().err
