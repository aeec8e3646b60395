"""Bad input: one line naming the value, exit code 2, before Ray or MLflow do anything."""

import json
import socket
import subprocess
import sys

import pytest

from orchestrator import sweep
from orchestrator.cli import SweepConfig, SweepInputError, build_parser, parse_sweep_args
from trainers.settings import ConfigError

BASE = ["--dataset", "synthetic", "--accs", "0.5,0.7"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    (["--dataset", "mnist", "--accs", "0.7", "--methods", "no-such-method"], "--methods 'no-such-method'"),
    (["--dataset", "mnist", "--accs", "0.7", "--scheduler", "pbt"], "--scheduler 'pbt'"),
    (["--dataset", "mnist", "--accs", "0.7", "--name", "a/b"], "--name 'a/b'"),
    (["--dataset", "mnist", "--accs", "0.7", "--name", "abc\n"], "--name 'abc\\n'"),  # a final newline
    (["--dataset", "mnist", "--accs", "nan"], "--accs nan"),
    (["--dataset", "mnist", "--accs", "0.7", "--trial-timeout", "-1"], "--trial-timeout -1.0"),
    (["--dataset", "mnist", "--accs", "0.7", "--trial-timeout", "inf"], "--trial-timeout inf"),
    (["--accs", "0.7"], "--dataset"),
    (["--resume", "nope"], "--resume 'nope': no sweep of that name"),
    (
        ["--dataset", "mnist", "--accs", "0.7", "--optuna-storage", "optuna.db"],
        "--optuna-storage 'optuna.db'",
    ),
]


@pytest.mark.parametrize("argv,needle", CASES)
def test_bad_flags(argv, needle, in_tmp, capsys):
    code, err = run_main(argv, capsys)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1, err  # one line


def test_unreachable_tracking_server(in_tmp, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    code, err = run_main([*BASE, "--tracking-uri", uri, "--tracking-wait", "0"], capsys)
    assert code == 2 and f"--tracking-uri '{uri}': server unreachable" in err and err.count("\n") == 1
    assert not (in_tmp / "sweeps").exists()


class HealthAfter:
    """A /health endpoint that answers 503 to its first ``down`` requests, then 200 to requests
    with the expected basic-auth header and 401 to others; counts what it saw."""

    def __init__(self, down: int, auth: str | None = None) -> None:
        import http.server
        import threading

        outer, self.seen, self.down, self.auth = self, [], down, auth

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append(self.headers.get("Authorization"))
                if len(outer.seen) <= outer.down:
                    code = 503
                elif outer.auth and self.headers.get("Authorization") != outer.auth:
                    code = 401
                else:
                    code = 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_startup_check_waits_for_a_server_that_comes_up(monkeypatch):
    import base64

    from orchestrator.tracking.server import wait_for_server

    token = "Basic " + base64.b64encode(b"driver:s3cret").decode()
    server = HealthAfter(down=2, auth=token)
    lines = []
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    server.down = 0
    assert wait_for_server(server.uri, 3600, say=lines.append) == "HTTP 401"  # no credentials: at once
    assert lines == [] and len(server.seen) == 1
    server.down, server.seen = 2, []  # down twice (the backoff's 1 s and 2 s), then up
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "driver")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert wait_for_server(server.uri, 3600, say=lines.append) is None
    assert server.seen[-1] == token
    assert len(server.seen) == 3 and "not answering (HTTP 503)" in lines[0] and lines[-1].endswith("answers")
    server.server.shutdown()


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


def test_failed_download_is_one_line_and_leaves_nothing(in_tmp, capsys, monkeypatch):
    """--data-dir on a missing folder, downloads allowed, the source unreachable (a file:// URL
    of a missing folder, so the test needs no network and cannot reach one)."""
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.MNIST, "mirrors", [(in_tmp / "no-mirror").as_uri() + "/"])
    code, err = run_main(
        ["--dataset", "mnist", "--accs", "0.9", "--data-dir", str(in_tmp / "d" / "data")], capsys
    )
    assert code == 2 and err.count("\n") == 1, err
    assert f"invalid --data-dir '{in_tmp / 'd' / 'data'}': dataset 'mnist': download" in err
    assert list(in_tmp.iterdir()) == []


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
    assert cfg.accs == (0.6, 0.8)  # sorted, as the frontier lists them
    assert cfg.methods == ("acert", "ibp") and cfg.gpus_per_trial == 0.25
    assert cfg.storage == str(in_tmp / "sweeps") and cfg.sweep_dir == str(in_tmp / "sweeps" / "n1")
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_default_tracking_uri_is_absolute_sqlite(in_tmp, monkeypatch):
    assert parse_sweep_args(BASE).tracking_uri == f"sqlite:///{in_tmp / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(SweepInputError, match="--shared-storage"):  # a local folder on a cluster
        parse_sweep_args(BASE)
    cfg = parse_sweep_args([*BASE, "--shared-storage"])
    assert cfg.tracking_uri == "http://mlflow:5000" and cfg.address == "auto"
    assert parse_sweep_args([*BASE, "--storage", "s3://bucket/sweeps"]).address == "auto"


def test_resume_reads_the_saved_config(in_tmp):
    cfg = parse_sweep_args([*BASE, "--name", "r1", "--trials", "5"])
    folder = in_tmp / "sweeps" / "r1"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(cfg.to_dict()))
    back = parse_sweep_args(["--resume", "r1", "--address", "auto", "--shared-storage"])
    assert back.resume and back.trials == 5 and back.address == "auto"
    assert back.replace(resume=False, address=None, shared_storage=False) == cfg


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
    fresh = parse_sweep_args(
        ["--dataset", "synthetic", "--accs", "0.9", "--name", "job", "--resume-if-exists"]
    )
    assert not fresh.resume and fresh.name == "job"
    folder = in_tmp / "sweeps" / "job"
    folder.mkdir(parents=True)
    saved = fresh.replace(sweep_id="0123456789abcdef")  # the first run's (its flags are these)
    (folder / "sweep.json").write_text(json.dumps(saved.to_dict()))
    # a restarted job runs the same command line: it resumes with the saved settings
    back = parse_sweep_args(
        [
            "--dataset",
            "synthetic",
            "--accs",
            "0.9",
            "--name",
            "job",
            "--resume-if-exists",
            "--address",
            "auto",
            "--shared-storage",
        ]
    )
    assert back.resume and back.sweep_id == "0123456789abcdef"
    assert back.shared_storage and back.address == "auto"  # where things run may change


def test_resume_if_exists_needs_a_name(in_tmp, capsys):
    with pytest.raises(SweepInputError, match="needs a fixed --name"):  # a typed error, not an exit
        parse_sweep_args(["--dataset", "synthetic", "--accs", "0.9", "--resume-if-exists"])
    code, err = run_main(["--dataset", "synthetic", "--accs", "0.9", "--resume-if-exists"], capsys)
    assert code == 2 and "needs a fixed --name" in err and err.count("\n") == 1


def test_unknown_flag_is_a_typed_error_and_one_line_in_main(in_tmp, capsys):
    with pytest.raises(SweepInputError, match="--no-such-flag"):
        parse_sweep_args([*BASE, "--no-such-flag"])
    code, err = run_main([*BASE, "--no-such-flag"], capsys)
    assert code == 2 and "unrecognized arguments: --no-such-flag" in err and err.count("\n") == 1


def test_trial_settings_are_checked_before_the_sweep_starts(in_tmp, capsys):
    code, err = run_main([*BASE, "--model", "resnet"], capsys)
    assert code == 2 and "model='resnet'" in err
    code, err = run_main([*BASE, "--val-acr-samples", "0"], capsys)
    assert code == 2 and "--val-acr-samples 0" in err


def test_help_lists_every_setting_with_its_help(capsys):
    import dataclasses

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for f in dataclasses.fields(SweepConfig):
        if f.metadata.get("cli", True):
            flag = "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))
            assert flag in out, flag
            first_words = " ".join(f.metadata["help"].split()[:2])
            assert first_words in " ".join(out.split()), first_words


def test_a_trial_config_is_made_only_by_sweep_trial(in_tmp):
    cfg = parse_sweep_args([*BASE, "--synthetic-size", "256", "--threads", "3", "--val-acr-samples", "50"])
    t = cfg.trial({"method": "crown-ibp", "beta_start": 0.75, "kappa": 0.2, "target": 0.7, "search_phase": 1})
    assert (t.dataset, t.synthetic_size, t.threads, t.val_acr_samples) == ("synthetic", 256, 3, 50)
    assert t.method == "crown-ibp" and t.params.beta_start == 0.75 and t.kappa == 0.2
    assert not t.download and not t.eval_test_at_end  # only the winners see the test set, after selection
    with pytest.raises(ConfigError, match="'min_eps' for method 'ibp'"):
        cfg.trial({"method": "ibp", "min_eps": 0.01})


def test_config_file_gives_defaults_that_flags_override(in_tmp, capsys):
    (in_tmp / "preset.json").write_text(json.dumps({"dataset": "synthetic", "accs": [0.6, 0.7], "epochs": 4}))
    cfg = parse_sweep_args(["--config", "preset.json", "--epochs", "2"])
    assert (cfg.dataset, cfg.accs, cfg.epochs) == ("synthetic", (0.6, 0.7), 2)
    (in_tmp / "bad.json").write_text(json.dumps({"dataset": "synthetic", "accs": [0.6], "epoch": 4}))
    code, err = run_main(["--config", "bad.json"], capsys)
    assert code == 2 and "unknown setting 'epoch'" in err and err.count("\n") == 1
    code, err = run_main(["--config", "missing.json"], capsys)
    assert code == 2 and "--config 'missing.json'" in err


@pytest.mark.parametrize(
    "setting, value, needle",
    [
        ("trials", True, "trials=true: expected an integer"),  # bool is an int in Python
        ("penalty", False, "penalty=false: expected a number"),
        ("epochs", 2.5, "epochs=2.5: expected an integer"),
        ("cpus_per_trial", "4", 'cpus_per_trial="4": expected a number'),
        ("download", 1, "download=1: expected true or false"),
        ("accs", "0.6,0.7", 'accs="0.6,0.7": expected a list of numbers'),
        ("methods", ["acert", 1], 'methods=["acert", 1]: expected a list of strings'),
        ("name", None, "name=null: expected a string"),
    ],
)
def test_config_file_values_must_have_the_settings_type(in_tmp, capsys, monkeypatch, setting, value, needle):
    """--config values are JSON, not text argparse converts: each is checked against its field's
    type, so a boolean never passes as a number, and nothing is written."""
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg: pytest.fail(f"a sweep started with {setting}"))
    (in_tmp / "typed.json").write_text(json.dumps({"dataset": "synthetic", "accs": [0.6], setting: value}))
    code, err = run_main(["--config", "typed.json"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"invalid --config 'typed.json': {needle}" in err, err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["typed.json"]


def test_config_file_takes_null_for_optional_settings_and_whole_numbers_for_floats(in_tmp):
    preset = {"dataset": "synthetic", "accs": [0.6], "threads": None, "model": None, "penalty": 10}
    (in_tmp / "typed.json").write_text(json.dumps(preset))
    cfg = parse_sweep_args(["--config", "typed.json"])
    assert (cfg.threads, cfg.model, cfg.penalty) == (None, None, 10)


def test_fixed_trial_settings_are_typed_and_checked(in_tmp):
    cfg = parse_sweep_args(
        [*BASE, "--methods", "acert,mtl-ibp", "--fixed", "batch_size=128,lr=0.002,alpha=0.1,kappa_final=none"]
    )
    assert cfg.fixed_settings("acert") == {"batch_size": 128, "lr": 0.002, "kappa_final": None}
    assert cfg.fixed_settings("mtl-ibp") == {
        "batch_size": 128,
        "lr": 0.002,
        "alpha": 0.1,
        "kappa_final": None,
    }
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # sweep.json keeps them


@pytest.mark.parametrize(
    "value, message",
    [
        ("batch_size=12x", "invalid --fixed 'batch_size=12x': not a valid int"),
        ("alpha=0.1", "invalid --fixed 'alpha=0.1': no swept method (acert) takes a setting 'alpha'"),
        ("epochs=3", "invalid --fixed 'epochs=3': epochs is a sweep setting: use --epochs"),
        ("lr", "invalid --fixed 'lr': expected KEY=VALUE"),
        ("lr=1,lr=2", "invalid --fixed 'lr=2': lr is given twice"),
        ("method=ibp", "no swept method (acert) takes a setting 'method'"),
        ("kappa=2", "invalid kappa=2.0: must lie in [0, 1]"),
    ],
)
def test_bad_fixed_settings_are_one_line_errors(in_tmp, capsys, value, message):
    code, err = run_main([*BASE, "--fixed", value], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
