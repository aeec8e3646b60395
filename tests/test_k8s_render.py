"""The kustomize renderer (k8s/kustomize_lite.py) and the structure of the rendered overlays.

Where a kubectl with kustomize >= v4 is installed, every overlay is also rendered by it and the
objects must be identical; elsewhere (CI without kubectl) that test is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
sys.path.insert(0, str(K8S))

import kustomize_lite as kl  # noqa: E402
import manifest_policy as mp  # noqa: E402

OVERLAYS = ["gpu", "gpu-long-lived", "cpu-dev"]


def render(overlay: str) -> list[dict]:
    return kl.render(K8S / "overlays" / overlay)


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


# --- the renderer on small kustomizations -----------------------------------------------------------
def test_json6902_add_replace_remove_and_append(tmp_path):
    ops = [
        {"op": "replace", "path": "/spec/containers/0/env/0/value", "value": "2"},
        {"op": "add", "path": "/spec/containers/0/env/-", "value": {"name": "B", "value": "3"}},
        {"op": "add", "path": "/spec/containers/0/env/0", "value": {"name": "Z", "value": "0"}},
        {"op": "remove", "path": "/metadata/name"},
        {"op": "add", "path": "/metadata/name", "value": "q"},
        {"op": "add", "path": "/metadata/labels", "value": {"a/b": "x"}},
        {"op": "replace", "path": "/metadata/labels/a~1b", "value": "y"},
    ]
    pod = json.loads(json.dumps(POD))
    kl.apply_json6902(pod, ops)
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
    with pytest.raises((kl.KustomizeError, kl.UnsupportedKustomization)):
        kl.apply_json6902(json.loads(json.dumps(POD)), [op])


def test_resources_components_patches_namespace_and_images(tmp_path):
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
    (pod,) = kl.render(overlay)
    assert pod["metadata"] == {
        "name": "p",
        "namespace": "ns1",
        "labels": {"k": "v"},
        "annotations": {"a": "b"},
    }
    assert pod["spec"]["containers"][0]["image"] == "reg/app:2.0"


@pytest.mark.parametrize(
    "kustomization, error",
    [
        ({"resources": ["objs.yaml"], "commonLabels": {"a": "b"}}, kl.UnsupportedKustomization),
        (
            {
                "resources": ["objs.yaml"],
                "patches": [
                    {"target": {"kind": "Pod", "name": "nope"}, "patch": "- {op: remove, path: /spec}"}
                ],
            },
            kl.KustomizeError,
        ),
        (
            {
                "resources": ["objs.yaml"],
                "patches": [
                    {"patch": "{apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: []}}"}
                ],
            },
            kl.UnsupportedKustomization,
        ),
        ({"resources": ["objs.yaml"], "images": [{"name": "other", "newTag": "2"}]}, kl.KustomizeError),
        ({"resources": ["objs.yaml", "objs.yaml"]}, kl.KustomizeError),
        ({"resources": ["missing.yaml"]}, kl.KustomizeError),
        (
            {"resources": ["objs.yaml"], "patches": [{"patch": "- {op: remove, path: /spec}"}]},
            kl.KustomizeError,
        ),
    ],
)
def test_renderer_refuses_what_it_cannot_render_faithfully(tmp_path, kustomization, error):
    folder = write(
        tmp_path, {"kustomization.yaml": kustomization, "objs.yaml": yaml.safe_dump_all([CM, POD])}
    )
    with pytest.raises(error):
        kl.render(folder)


def test_split_image():
    assert kl.split_image("reg:5000/a/b:1.2@sha256:ab") == ("reg:5000/a/b", "1.2", "sha256:ab")
    assert kl.split_image("reg:5000/a/b") == ("reg:5000/a/b", None, None)
    assert kl.split_image("postgres:17.5-bookworm") == ("postgres", "17.5-bookworm", None)


# --- the real overlays ----------------------------------------------------------------------------------
def test_every_overlay_renders_and_the_default_entry_point_is_the_gpu_overlay():
    rendered = {o: render(o) for o in OVERLAYS}
    assert kl.render(K8S) == rendered["gpu"]
    for overlay, objects in rendered.items():
        assert objects, overlay
        assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"acert"}


def test_every_manifest_file_parses():
    files = sorted(
        p for p in K8S.rglob("*.yaml") if "kustomization" not in p.name and ".patch." not in p.name
    )
    assert len(files) >= 8
    for path in files:
        assert kl.load_documents(path), path


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


def _kubectl_kustomize() -> str | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    try:
        info = json.loads(
            subprocess.run(
                [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30
            ).stdout
            or "{}"
        )
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return None
    version = str(info.get("kustomizeVersion", "")).lstrip("v").split(".")[0]
    return kubectl if version.isdigit() and int(version) >= 4 else None


@pytest.mark.skipif(
    _kubectl_kustomize() is None,
    reason="no kubectl with kustomize >= v4 on PATH "
    "(Debian's kubernetes-client embeds kustomize v2); the Python renderer is used alone",
)
@pytest.mark.parametrize("folder", ["k8s", *[f"k8s/overlays/{o}" for o in OVERLAYS]])
def test_python_renderer_matches_kubectl_kustomize(folder):
    out = subprocess.run(
        [_kubectl_kustomize(), "kustomize", str(REPO / folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    theirs = {kl.object_id(o): o for o in yaml.safe_load_all(out) if o}
    ours = {kl.object_id(o): o for o in kl.render(REPO / folder)}
    assert ours == theirs


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
    assert set(programs) == {"prefetch-data", "wait-for-mlflow", "create-bucket"}
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
