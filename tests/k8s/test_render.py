"""The rendered overlays of k8s/ (rendered by ``kubectl kustomize``; tests/k8s/kubectl.py finds a
kubectl with kustomize >= v5, else these tests skip, or fail when $CI is set)."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from . import manifest_policy as mp
from .kubectl import render as kustomize
from .kubectl import require_kubectl

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ["gpu", "gpu-long-lived", "cpu-dev"]
CLUSTER_SCOPED = {"Namespace", "PriorityClass"}  # kustomize's namespace: leaves these alone


@cache
def _rendered(folder: Path) -> tuple[dict, ...]:
    return tuple(kustomize(folder, require_kubectl()))


def render(overlay: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(K8S / "overlays" / overlay)))


def by_id(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def write(folder: Path, files: dict[str, object]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return folder


CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"x": "1"}}
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "image": "app:1.0", "env": [{"name": "A", "value": "1"}]}]},
}


# --- the kustomize features k8s/ relies on ------------------------------------------------------------
def test_kubectl_renders_components_patches_namespace_and_images(tmp_path):
    """What the overlays use, on a small kustomization: resources from a base folder, a Component
    whose strategic-merge patch deletes an object, JSON6902 and strategic-merge patches, namespace
    and images. Shows that the kubectl found is recent enough (Debian's kustomize v2 is not)."""
    write(
        tmp_path / "base",
        {"kustomization.yaml": {"resources": ["objs.yaml"]}, "objs.yaml": yaml.safe_dump_all([CM, POD])},
    )
    write(
        tmp_path / "comp",
        {
            "kustomization.yaml": {
                "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                "kind": "Component",
                "patches": [{"path": "del.yaml"}],
            },
            "del.yaml": {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "a"},
                "$patch": "delete",
            },
        },
    )
    overlay = write(
        tmp_path / "overlay",
        {
            "kustomization.yaml": {
                "namespace": "ns1",
                "resources": ["../base"],
                "components": ["../comp"],
                "images": [{"name": "app", "newName": "reg/app", "newTag": "2.0"}],
                "patches": [
                    {
                        "target": {"kind": "Pod", "name": "p"},
                        "patch": "- {op: add, path: /metadata/labels, value: {k: v}}",
                    },
                    {"patch": "{apiVersion: v1, kind: Pod, metadata: {name: p, annotations: {a: b}}}"},
                ],
            }
        },
    )
    (pod,) = kustomize(overlay, require_kubectl())
    assert pod["metadata"] == {
        "name": "p",
        "namespace": "ns1",
        "labels": {"k": "v"},
        "annotations": {"a": "b"},
    }
    assert pod["spec"]["containers"][0]["image"] == "reg/app:2.0"


def _patch_and_image_entries() -> list[tuple[str, str, int]]:
    """(kustomization file relative to k8s/, field, index) of every patches / images entry."""
    out = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        k = yaml.safe_load(path.read_text()) or {}
        for field in ("patches", "images"):
            out += [(str(path.relative_to(K8S)), field, i) for i in range(len(k.get(field) or []))]
    return out


@pytest.mark.parametrize("kustomization, field, index", _patch_and_image_entries())
def test_every_patch_and_image_entry_changes_the_output(tmp_path, kustomization, field, index):
    """kustomize silently ignores a patch target or an images name that matches nothing: an object
    renamed in the base would leave an overlay without effect. Dropping any one entry must change
    what at least one overlay renders."""
    require_kubectl()
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.md", "Dockerfile*", "__pycache__"))
    k = yaml.safe_load((tree / kustomization).read_text())
    del k[field][index]
    (tree / kustomization).write_text(yaml.safe_dump(k))
    first = [o for o in OVERLAYS if f"overlays/{o}/" in kustomization]  # the entry's own overlay
    changed = any(kustomize(tree / "overlays" / o) != render(o) for o in first + OVERLAYS)
    assert changed, f"{kustomization} {field}[{index}] has no effect on any overlay"


# --- the real overlays ----------------------------------------------------------------------------------
def test_every_overlay_renders_and_the_default_entry_point_is_the_gpu_overlay():
    rendered = {o: render(o) for o in OVERLAYS}
    assert kustomize(K8S, require_kubectl()) == rendered["gpu"]
    for overlay, objects in rendered.items():
        assert objects, overlay
        namespaced = [o for o in objects if o["kind"] not in CLUSTER_SCOPED]
        assert {o["metadata"].get("namespace") for o in namespaced} == {"acert"}, overlay
        assert all("namespace" not in o["metadata"] for o in objects if o["kind"] in CLUSTER_SCOPED), overlay


def test_k8s_holds_only_manifests_the_dockerfile_and_the_readme():
    other = sorted(
        str(p.relative_to(K8S))
        for p in K8S.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".yaml"
        and p.name not in ("README.md", "Dockerfile", "Dockerfile.dockerignore")
    )
    assert other == []


def test_every_manifest_file_parses():
    files = sorted(
        p for p in K8S.rglob("*.yaml") if "kustomization" not in p.name and ".patch." not in p.name
    )
    assert len(files) >= 8
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc, path


def test_artifact_store_is_chosen_by_the_overlay():
    gpu, dev = by_id(render("gpu")), by_id(render("cpu-dev"))
    gpu_args = gpu["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"]
    dev_args = dev["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert gpu_args[gpu_args.index("--artifacts-destination") + 1] == "s3://mlflow-artifacts"
    assert ("StatefulSet", "minio") in gpu and ("PersistentVolumeClaim", "mlflow-artifacts") not in gpu
    assert dev_args[dev_args.index("--artifacts-destination") + 1] == "/mnt/mlflow-artifacts"
    assert ("StatefulSet", "minio") not in dev and ("PersistentVolumeClaim", "mlflow-artifacts") in dev


def test_gpu_overlays_request_gpus_and_cpu_dev_does_not():
    for overlay in OVERLAYS:
        text = yaml.safe_dump_all(render(overlay))
        assert ("nvidia.com/gpu" in text) == (overlay != "cpu-dev"), overlay
    dev = by_id(render("cpu-dev"))
    assert all(
        "ReadWriteOnce" in dev["PersistentVolumeClaim", n]["spec"]["accessModes"]
        for n in ("acert-sweeps", "acert-datasets")
    )


def test_long_lived_overlay_runs_one_sweep_on_the_same_cluster_spec_as_the_rayjob():
    gpu, long_lived = by_id(render("gpu")), by_id(render("gpu-long-lived"))
    assert ("RayJob", "acert-sweep") not in long_lived
    on_cluster = long_lived["RayJob", "acert-sweep-on-cluster"]["spec"]
    assert on_cluster["clusterSelector"] == {"ray.io/cluster": "acert-ray"}
    assert (
        long_lived["RayCluster", "acert-ray"]["spec"]
        == gpu["RayJob", "acert-sweep"]["spec"]["rayClusterSpec"]
    )
    assert on_cluster["entrypoint"] == gpu["RayJob", "acert-sweep"]["spec"]["entrypoint"]


# --- the small programs the manifests run -----------------------------------------------------------
def _inline_programs(overlay: str) -> dict[str, tuple[str, list[str]]]:
    """{container name: (python -c program, args)} for every ``python -c`` container of an overlay."""
    out = {}
    for obj in render(overlay):
        for _, c, _ in mp.containers(obj):
            command = c.get("command") or []
            if command[:2] == ["python", "-c"]:
                out[c["name"]] = (command[2], [str(a) for a in command[3:] + (c.get("args") or [])])
    return out


def test_inline_programs_are_valid_python():
    programs = {**_inline_programs("gpu"), **_inline_programs("cpu-dev")}
    assert set(programs) == {"prefetch-data", "wait-for-mlflow", "create-databases", "wait-for-bucket"}
    for name, (code, _) in programs.items():
        compile(code, name, "exec")


def test_prefetch_program_loads_data_with_the_projects_loader(tmp_path):
    code, args = _inline_programs("gpu")["prefetch-data"]
    assert args == ["cifar10", "/mnt/acert/data"]
    # the synthetic dataset needs no download: this runs the same call on the real loader
    subprocess.run([sys.executable, "-c", code, "synthetic", str(tmp_path)], check=True, timeout=120)


def test_wait_for_mlflow_returns_once_health_answers():
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, args = _inline_programs("gpu")["wait-for-mlflow"]
        assert args == ["http://mlflow:5000"]
        url = f"http://127.0.0.1:{server.server_address[1]}"
        subprocess.run([sys.executable, "-c", code, url], check=True, timeout=30)
    finally:
        server.shutdown()
