"""Offline checks of the Kubernetes manifests: schemas, security policy, the sweep command line.

Every overlay (rendered by ``kubectl kustomize``, see kubectl.py) must pass every check
(``python -m tests.k8s.check_manifests`` runs the same ones on any folder); every rule must reject
the broken manifests of tests/fixtures/k8s/ for that rule alone. Schemas: the CRDs of every KubeRay
release vendored in tests/fixtures/kuberay-crds (1.6.2, the oldest supported, and 1.7.0) and
kubernetes-validate's bundled Kubernetes schemas (manifest_schema.KUBERNETES_VERSION).
"""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from . import json_patch
from . import manifest_policy as mp
from . import manifest_schema as ms
from . import operations_policy as op
from . import ray_policy as rp
from . import sweep_policy as sp
from .check_manifests import all_violations, main
from .kubectl import render, require_kubectl

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
FIXTURES = REPO / "tests" / "fixtures" / "k8s"
CRD_DIRS = list(ms.CRD_DIRS.values())  # tests/fixtures/kuberay-crds/v*: every supported release

OVERLAYS = {"gpu": False, "gpu-long-lived": False, "cpu-dev": True}  # overlay -> single node
PINS = rp.pinned_versions(REPO / "pyproject.toml")


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(render(K8S / "overlays" / overlay, require_kubectl()))


def objects_of(overlay: str) -> list[dict]:
    return copy.deepcopy(list(rendered(overlay)))


def find(objects: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


# --- the real manifests pass --------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_and_pod_templates_validate_with_kubernetes_validate(overlay):
    assert ms.schema_violations(objects_of(overlay), crd_dir=None) == []


def test_the_vendored_crds_are_kuberay_1_6_and_1_7():
    assert list(ms.CRD_DIRS) == ["v1.6.2", "v1.7.0"]
    assert ms.DEFAULT_CRD_DIR == ms.CRD_DIRS["v1.7.0"]
    readme = (ms.CRD_ROOT / "README.md").read_text()
    for release, folder in ms.CRD_DIRS.items():
        validators = ms.crd_validators(str(folder))
        assert {("ray.io/v1", k) for k in ("RayCluster", "RayJob")} <= set(validators), release
        assert all(f"{release}/{f.name}" in readme for f in folder.glob("*.yaml")), release


@pytest.mark.parametrize("release", ms.CRD_DIRS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_objects_validate_against_every_supported_kuberay(overlay, release):
    objects = objects_of(overlay)
    crds = ms.CRD_DIRS[release]
    ray_objects = [o for o in objects if o["apiVersion"] == "ray.io/v1"]
    assert ray_objects and all(
        (o["apiVersion"], o["kind"]) in ms.crd_validators(str(crds)) for o in ray_objects
    )
    assert ms.schema_violations(objects, crds) == []


@pytest.mark.parametrize("overlay, single_node", OVERLAYS.items())
def test_every_overlay_passes_the_policy(overlay, single_node):
    objects = objects_of(overlay)
    assert mp.policy_violations(objects) == []
    assert op.operations_violations(objects, single_node=single_node) == []
    assert rp.ray_violations(objects, ray_version=PINS["ray"], single_node=single_node) == []
    assert sp.sweep_violations(objects) == []


def test_the_image_is_the_official_ray_gpu_image_of_the_pinned_ray():
    assert PINS["ray"] == "2.60.0"  # pyproject.toml: ray[tune]==2.60.0
    assert rp.dockerfile_violations(K8S / "Dockerfile", PINS) == []
    for overlay in OVERLAYS:
        for obj in objects_of(overlay):
            if obj["apiVersion"] == "ray.io/v1":
                images = [c["image"] for _, c, _ in mp.containers(obj) if "image" in c]
                assert images and all(f"ray{PINS['ray']}" in i for i in images), (overlay, images)


def test_the_gpu_rayjob_runs_the_cifar10_sweep_of_the_issue():
    job = find(objects_of("gpu"), "RayJob", "acert-sweep")
    ns, error = sp.parse_entrypoint(job["spec"]["entrypoint"])
    assert error is None
    accs = ns.accs if isinstance(ns.accs, tuple) else tuple(float(a) for a in ns.accs.split(","))
    assert (ns.dataset, accs, ns.address, ns.tracking_uri) == (
        "cifar10",
        (0.6, 0.7, 0.8),
        "auto",
        "http://mlflow:5000",
    )
    assert (ns.storage, ns.data_dir, ns.name, sp.downloads(ns)) == (
        "/mnt/acert/sweeps",
        "/mnt/acert/data",
        "acert-cifar10",
        False,
    )
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 1
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert [
        w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for w in workers
    ] == ["1"]


def test_entrypoint_is_parsed_by_the_projects_own_parser():
    from orchestrator.cli import build_parser

    for overlay in OVERLAYS:
        for job in (o for o in objects_of(overlay) if o["kind"] == "RayJob"):
            words = shlex.split(job["spec"]["entrypoint"])
            assert words[:3] == ["python", "-m", "orchestrator.sweep"]
            build_parser().parse_args(words[3:])  # raises SystemExit(2) on an unknown flag


class FakeSweepInputError(ValueError):
    """Stands for orchestrator.cli.SweepInputError, whichever version of the parser is installed."""


def exits(message: str):
    """The parser's old behaviour on bad input: one line on stderr, then exit code 2."""

    def fail(*args, **kwargs):
        sys.stderr.write(f"python -m orchestrator.sweep: error: {message}\n")
        raise SystemExit(2)

    return fail


def raises(message: str):
    """The parser's new behaviour on bad input: SweepInputError (a ValueError) with the line."""

    def fail(*args, **kwargs):
        raise FakeSweepInputError(message)

    return fail


@pytest.mark.parametrize("behaviour", [exits, raises])
def test_rejected_values_keep_their_message_whether_the_parser_exits_or_raises(monkeypatch, behaviour):
    import orchestrator.cli

    monkeypatch.setattr(orchestrator.cli, "parse_sweep_args", behaviour("invalid --accs 1.5: not in (0, 1)"))
    ns, error = sp.parse_entrypoint("python -m orchestrator.sweep --dataset mnist --accs 1.5")
    assert ns is None
    assert error.startswith("rejected by orchestrator.cli: ") and error.endswith(
        "invalid --accs 1.5: not in (0, 1)"
    )


@pytest.mark.parametrize("behaviour", [exits, raises])
def test_unknown_flags_keep_their_message_whether_the_parser_exits_or_raises(monkeypatch, behaviour):
    import orchestrator.cli

    class Parser:
        parse_args = staticmethod(behaviour("unrecognized arguments: --max-retries 2"))

    monkeypatch.setattr(orchestrator.cli, "build_parser", Parser)
    ns, error = sp.parse_entrypoint("python -m orchestrator.sweep --max-retries 2")
    assert ns is None
    assert error.startswith("rejected by orchestrator.cli: ")
    assert error.endswith("unrecognized arguments: --max-retries 2")


def test_the_readme_resume_command_is_a_valid_entrypoint():
    """k8s/README.md's explicit resume command passes the parser and the entrypoint rules."""
    readme = (K8S / "README.md").read_text()
    (command,) = re.findall(r"`(python -m orchestrator.sweep --resume [^`]+)`", readme)
    objects = objects_of("gpu")
    find(objects, "RayJob", "acert-sweep")["spec"]["entrypoint"] = command
    assert sp.sweep_violations(objects) == []


def test_secrets_are_referenced_by_name_and_documented():
    """No Secret and no password in any manifest; every Secret (and key) they use is in the README."""
    readme = (K8S / "README.md").read_text()
    needed = set()
    for overlay in OVERLAYS:
        for obj in objects_of(overlay):
            assert obj["kind"] != "Secret"
            for _, c, _ in mp.containers(obj):
                for env in c.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        needed.add((ref["name"], ref["key"]))
            for _, cluster in mp.ray_cluster_specs(obj):
                needed.add((cluster["authOptions"]["secretName"], "auth_token"))
    assert {name for name, _ in needed} == {
        "acert-postgres",
        "acert-postgres-mlflow",
        "acert-postgres-optuna",
        "acert-mlflow",
        "acert-minio",
        "acert-minio-mlflow",
        "acert-ray-token",
    }
    for name, key in sorted(needed):
        pattern = (
            rf"create secret generic {re.escape(name)}\b[^\n]*(\\\n[^\n]*)*--from-literal={re.escape(key)}="
        )
        assert re.search(pattern, readme), f"k8s/README.md does not show how to create {name} with key {key}"


def test_no_manifest_file_holds_a_secret():
    """Also the files that are not rendered as such (patches, components): no Secret, no password."""
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path
        for line in path.read_text().splitlines():
            if not line.lstrip().startswith("#"):
                assert mp.literal_secrets(line) == [], (path, line)


def test_literal_secret_detection():
    assert mp.literal_secrets("postgresql://$(DB_USER):$(DB_PASSWORD)@postgres:5432/mlflow") == []
    assert mp.literal_secrets("postgresql://mlflow:hunter2@postgres:5432/mlflow") != []
    assert mp.literal_secrets("PGPASSWORD=hunter2 psql") != []
    assert mp.literal_secrets('password: "$(DB_PASSWORD)"') == []
    assert mp.literal_secrets("secretName: acert-ray-token") == []


@pytest.mark.parametrize(
    "value, expected",
    [("500m", 0.5), ("2", 2.0), (8, 8.0), ("512Mi", 512 * 2**20), ("1G", 1e9), ("1.5Gi", 1.5 * 2**30)],
)
def test_quantity(value, expected):
    assert mp.quantity(value) == expected


@pytest.mark.parametrize("bad", ["1.5.5", "12XB", "", "-1"])
def test_quantity_rejects_garbage(bad):
    with pytest.raises(ValueError):
        mp.quantity(bad)


# --- every rule rejects a broken manifest -----------------------------------------------------------
CASES = [
    c for path in sorted(FIXTURES.glob("broken_manifests_*.yaml")) for c in yaml.safe_load(path.read_text())
]


def break_overlay(case: dict) -> list[dict]:
    objects = objects_of(case["overlay"])
    for target in case.get("remove") or []:
        objects.remove(find(objects, **target))
    for patch in case.get("patches") or []:
        json_patch.apply_json6902(find(objects, **patch["target"]), patch["ops"], case["id"])
    for sub in case.get("substitutions") or []:
        obj = find(objects, **sub["target"])
        parts = json_patch.pointer(sub["path"])
        parent = json_patch.walk(obj, parts[:-1], case["id"])
        key = int(parts[-1]) if isinstance(parent, list) else parts[-1]
        assert sub["old"] in parent[key], f"{case['id']}: {sub['old']!r} not in {sub['path']} (stale fixture)"
        parent[key] = parent[key].replace(sub["old"], sub["new"])
    return objects + copy.deepcopy(case.get("objects") or [])


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "image": "app:1.0", "env": [{"name": "A", "value": "1"}]}]},
}


def test_json6902_add_replace_remove_and_append():
    ops = [
        {"op": "replace", "path": "/spec/containers/0/env/0/value", "value": "2"},
        {"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "B", "value": "3"}},
        {"op": "add", "path": "/spec/containers/0/env/0", "value": {"name": "Z", "value": "0"}},
        {"op": "remove", "path": "/metadata/name"},
        {"op": "add", "path": "/metadata/name", "value": "q"},
        {"op": "add", "path": "/metadata/labels", "value": {"a/b": "x"}},
        {"op": "replace", "path": "/metadata/labels/a~1b", "value": "y"},
    ]
    pod = copy.deepcopy(POD)
    json_patch.apply_json6902(pod, ops)
    assert pod["spec"]["containers"][0]["env"] == [
        {"name": "Z", "value": "0"},
        {"name": "A", "value": "2"},
        {"name": "B", "value": "3"},
    ]
    assert pod["metadata"] == {"name": "q", "labels": {"a/b": "y"}}


@pytest.mark.parametrize(
    "op",
    [
        {"op": "replace", "path": "/spec/missing", "value": 1},
        {"op": "remove", "path": "/spec/containers/3"},
        {"op": "test", "path": "/metadata/name", "value": "other"},
        {"op": "move", "from": "/metadata", "path": "/x"},
    ],
)
def test_json6902_rejects_bad_operations(op):
    """A fixture whose patch no longer applies fails loudly instead of breaking nothing."""
    with pytest.raises(json_patch.PatchError):
        json_patch.apply_json6902(copy.deepcopy(POD), [op])


def test_split_image():
    assert mp.split_image("reg:5000/a/b:1.2@sha256:ab") == ("reg:5000/a/b", "1.2", "sha256:ab")
    assert mp.split_image("reg:5000/a/b") == ("reg:5000/a/b", None, None)
    assert mp.split_image("postgres:17.5-bookworm") == ("postgres", "17.5-bookworm", None)


def test_every_rule_has_a_broken_fixture():
    rules = {r for c in CASES for r in [c["rule"]]}
    assert rules == {
        "schema-crd",
        "schema-core",
        "non-root",
        "no-privilege-escalation",
        "pod-security",
        "resources",
        "pinned-images",
        "no-inline-secrets",
        "env-refs",
        "services",
        "volumes",
        "ray-version",
        "ray-auth",
        "ray-head",
        "autoscaling",
        "rayjob-lifecycle",
        "sweep-entrypoint",
        "trial-fit",
        "shared-storage",
        "mlflow-server",
        "scheduling",
        "disruption",
        "network-policy",
        "single-node-fit",
        "read-only-root",
        "service-account-token",
        "ephemeral-storage",
        "head-eviction",
        "ray-network",
        "egress",
        "database-roles",
        "minio-user",
        "mlflow-auth",
        "secret-argv",
    }
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_broken_manifest_is_rejected_for_its_rule_alone(case):
    objects = break_overlay(case)
    problems = all_violations(objects, crd_dirs=CRD_DIRS, pins=PINS, single_node=OVERLAYS[case["overlay"]])
    assert {rule for rule, _ in problems} == {case["rule"]}, problems


DOCKERFILE_CASES = yaml.safe_load((FIXTURES / "broken_dockerfiles.yaml").read_text())


@pytest.mark.parametrize("case", DOCKERFILE_CASES, ids=[c["id"] for c in DOCKERFILE_CASES])
def test_broken_dockerfile_is_rejected(case, tmp_path):
    text = (K8S / "Dockerfile").read_text()
    assert case["old"] in text, f"{case['id']}: stale fixture"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(case["old"], case["new"]))
    problems = rp.dockerfile_violations(broken, PINS)
    assert problems and {rule for rule, _ in problems} == {"dockerfile"}


@pytest.mark.parametrize("overlay, single_node", OVERLAYS.items())
def test_check_manifests_command_passes_every_overlay(overlay, single_node, capsys):
    require_kubectl()
    argv = [str(K8S / "overlays" / overlay)] + (["--single-node"] if single_node else [])
    assert main(argv) == 0, capsys.readouterr().out
    assert "0 problem(s)" in capsys.readouterr().err


def test_check_manifests_command_reports_a_broken_overlay(tmp_path, capsys):
    require_kubectl()
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("__pycache__"))
    rayjob = tree / "base" / "rayjob.yaml"
    assert 'rayVersion: "2.60.0"' in rayjob.read_text()
    rayjob.write_text(rayjob.read_text().replace('rayVersion: "2.60.0"', 'rayVersion: "2.59.0"'))
    assert main([str(tree / "overlays" / "gpu")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("ray-version: RayJob/acert-sweep: rayVersion '2.59.0'"), out
