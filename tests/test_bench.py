"""Smoke test of the benchmark scripts: each runs with tiny sizes (``--quick``) and prints one
JSON object with its figures and the machine. Nothing here times anything: the figures of a
quick run mean nothing, the benchmarks are run by hand (docs/benchmarks.md).

The time limits are generous on purpose: a quick run takes seconds to a minute on an idle
machine, several times that on a loaded 2-core one; a limit only stops a hung script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900  # a hung script, not a slow machine
MACHINE_KEYS = {"cpu", "torch_threads", "torch", "gpu", "device"}
EXPECTED = {
    "step": {"configs", "summary", "phase"},
    "radius": {
        "acert_epoch_ratio",
        "evals_per_batch",
        "sample_evals_per_sample",
        "median_epoch_s",
        "acert_warm_epoch_ratio",
        "acert_warm_sample_evals_per_sample",
    },
    "radius_quality": {
        "exact_val_acc",
        "warm_val_acc",
        "exact_val_acr",
        "warm_val_acr",
        "warm_over_exact_epoch_s",
    },
    "certify": {"certify_ibp_ratio", "certify_crown_ibp_ratio", "ibp_acr", "ibp_sample_evals_per_sample"},
    "sweep": {"overhead_1", "ratio_2", "fit_overhead_1", "ray_init_s", "median_s"},
    "search": {
        "tpe_vs_random_ratio",
        "shared_vs_independent_ratio",
        "median_trials",
        "best_feasible_acr_norm",
    },
}


def run_quick(name: str, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--device", "cpu", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"bench.{name} must print exactly one line on stdout, got {proc.stdout[-1000:]!r}"
    return json.loads(lines[0])


@pytest.mark.parametrize("name", ["step", "radius", "radius_quality", "certify", "search"])
def test_bench_script_prints_one_json_object(name):
    out = run_quick(name)
    assert out["benchmark"] == name
    assert MACHINE_KEYS <= out["machine"].keys()
    assert EXPECTED[name] <= out.keys()
    if name == "step":
        for config in out["configs"]:
            want = {"ibp_ratio", "crown_ibp_ratio", "acert_ratio", "sabr_ratio", "median_ms"}
            assert (
                want | {"crown_ibp_over_ibp", "crown_ibp_margins_over_ibp", "sabr_over_ibp"} <= config.keys()
            )
            assert all(v > 0 for v in config["median_ms"].values())


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_bench_sweep_prints_one_json_object():
    out = run_quick("sweep")
    assert out["benchmark"] == "sweep" and MACHINE_KEYS <= out["machine"].keys()
    assert EXPECTED["sweep"] <= out.keys() and out["errored_trials"] == 0
