"""``--help`` of every command-line entry point prints its help and exits 0.

argparse formats each help string with ``%``: a literal percent sign in a help text (written
``%%``) or a ``%(default)s`` of the wrong kind breaks ``--help`` only, so it is checked here
for every module a user runs with ``python -m``.
"""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "orchestrator.sweep",
    "orchestrator.frontier",
    "orchestrator.recheck",
    "orchestrator.compare",
    "trainers.train",
    "trainers.certify",
    "trainers.verify",
    "bench.certify",
    "bench.radius",
    "bench.radius_quality",
    "bench.search",
    "bench.step",
    "bench.sweep",
]


@pytest.mark.parametrize("module", MODULES)
def test_help_prints_and_exits_0(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("usage:") and "--help" in out
