"""--protocol reaches the search spaces, is kept in sweep.json (a resumed sweep searches as it
began) and is refused, in one line with exit code 2, when it is not a known protocol."""

import json

import optuna
import pytest

from orchestrator import sweep
from orchestrator.cli import SweepInputError, parse_sweep_args
from search_spaces import get_space

ARGS = ["--dataset", "synthetic", "--accs", "0.9", "--name", "job"]


def test_a_bad_protocol_is_one_line_exit_2_and_writes_nothing(in_tmp, capsys):
    assert sweep.main([*ARGS, "--protocol", "exact"]) == 2
    err = capsys.readouterr().err
    assert "invalid --protocol 'exact': choose one of tuned, paper" in err and err.count("\n") == 1
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize("protocol", ["tuned", "paper"])
def test_the_protocol_reaches_the_spaces(in_tmp, protocol):
    cfg = parse_sweep_args([*ARGS, "--protocol", protocol])
    ctx = sweep.space_context(cfg)
    assert ctx.protocol == protocol
    trial = optuna.create_study().ask()
    out = get_space("acert")(trial, ctx)
    assert ("max_eps" in trial.params) == (protocol == "tuned")
    if protocol == "paper":
        assert out["max_eps"] == cfg.spec.max_eps


def test_the_protocol_is_saved_and_a_resume_keeps_it(in_tmp):
    assert parse_sweep_args(ARGS).protocol == "tuned"  # the default
    first = parse_sweep_args([*ARGS, "--protocol", "paper"])
    assert first.to_dict()["protocol"] == "paper"  # sweep.json and the parent run's params
    folder = in_tmp / "sweeps" / "job"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(first.to_dict()))
    assert parse_sweep_args(["--resume", "job"]).protocol == "paper"
    # the same command line again resumes; another protocol would change what the sweep computes
    assert parse_sweep_args([*ARGS, "--protocol", "paper", "--resume-if-exists"]).resume
    with pytest.raises(SweepInputError, match=r"--protocol tuned \(saved: paper\)"):
        parse_sweep_args([*ARGS, "--resume-if-exists"])
