"""Offline schema validation of rendered manifests.

- ray.io objects: ``jsonschema`` against the ``openAPIV3Schema`` of the KubeRay CRDs vendored in
  ``tests/fixtures/kuberay-crds/vX.Y.Z/``: every release there (``CRD_DIRS``: the oldest one the
  manifests support, 1.6.2, and the newest, 1.7.0), since a field unknown to the oldest would
  make the API server of a cluster running it reject the object. The schemas are made *strict* first: an object schema that lists
  ``properties`` and neither ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields``
  rejects unknown fields, as the API server does under ``kubectl apply``'s default
  ``--validate=strict``. Without it a typo such as ``enableInTreeAutoScaling`` would pass.
  The CRDs' CEL rules (``x-kubernetes-validations``) are not evaluated here; ``ray_policy`` checks
  the operator-side rules that matter for these manifests.
- core objects (Deployment, Service, StatefulSet, PVC, ...) and every pod template embedded in a
  Ray object: ``kubernetes-validate`` in strict mode, for the pinned Kubernetes version below.

Each problem is a ``(rule, message)`` pair, rule ``schema-crd`` or ``schema-core``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

KUBERNETES_VERSION = "1.33.0"  # the API the manifests must validate against (kubernetes-validate bundles it)
CRD_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "kuberay-crds"


def _release(folder: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in folder.name[1:].split("."))


# {'v1.6.2': folder, 'v1.7.0': folder}, oldest first: one folder per vendored KubeRay release.
CRD_DIRS = {
    d.name: d
    for d in sorted(
        (d for d in CRD_ROOT.iterdir() if d.is_dir() and re.fullmatch(r"v\d+\.\d+\.\d+", d.name)),
        key=_release,
    )
}
MIN_KUBERAY, LATEST_KUBERAY = next(iter(CRD_DIRS)), next(reversed(CRD_DIRS))
DEFAULT_CRD_DIR = CRD_DIRS[LATEST_KUBERAY]

Violation = tuple[str, str]


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects with declared properties reject unknown keys."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=4)
def crd_validators(crd_dir: str) -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """{(apiVersion, kind): validator} for every served version of every CRD file in ``crd_dir``."""
    folder = Path(crd_dir)
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise FileNotFoundError(f"no CRD files (*.yaml) in {folder}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = {}
    for path in files:
        with open(path) as f:
            crd = yaml.load(f, Loader=loader)
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schema = strict(version["schema"]["openAPIV3Schema"])
                out[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def _crd_errors(obj: dict, validators: dict) -> list[Violation]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in validators:
        return [("schema-crd", f"{key[1]} {key[0]}: no CRD schema for it")]
    errors = sorted(validators[key].iter_errors(obj), key=lambda e: list(e.absolute_path))
    name = (obj.get("metadata") or {}).get("name")
    return [
        ("schema-crd", f"{key[1]}/{name} at /{'/'.join(map(str, e.absolute_path))}: {e.message}")
        for e in errors[:5]
    ]


def _core_errors(obj: dict, where: str) -> list[Violation]:
    return [
        ("schema-core", f"{where}{message}")
        for message in _core_errors_cached(json.dumps(obj, sort_keys=True))
    ]


@functools.lru_cache(maxsize=512)
def _core_errors_cached(obj_json: str) -> tuple[str, ...]:
    """kubernetes-validate re-reads its 1.4 MB definitions file on every call: cache by content."""
    import kubernetes_validate  # late: only this check needs it

    try:
        kubernetes_validate.validate(json.loads(obj_json), KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return (f" at /{'/'.join(map(str, e.path))}: {e.message}",)
    except kubernetes_validate.SchemaNotFoundError as e:
        return (f": {e.message}",)
    return ()


def embedded_pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) for the pod templates inside a RayCluster or RayJob."""
    spec = obj.get("spec") or {}
    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    cluster = spec.get("rayClusterSpec") if obj.get("kind") == "RayJob" else spec
    out = []
    if obj.get("kind") == "RayJob" and spec.get("submitterPodTemplate"):
        out.append((f"{name} submitterPodTemplate", spec["submitterPodTemplate"]))
    if cluster:
        head = (cluster.get("headGroupSpec") or {}).get("template")
        if head is not None:
            out.append((f"{name} head template", head))
        for group in cluster.get("workerGroupSpecs") or []:
            if group.get("template") is not None:
                out.append((f"{name} worker group {group.get('groupName')} template", group["template"]))
    return out


def schema_violations(
    objects: list[dict], crd_dir: str | Path | Sequence[str | Path] | None = DEFAULT_CRD_DIR
) -> list[Violation]:
    """Schema problems of every rendered object (empty when all validate). ``crd_dir`` is one
    folder of CRDs or several (then each ray.io object must validate against every one, and a
    message names the folder, e.g. ``[v1.6.2]``). With ``crd_dir=None`` the ray.io objects
    themselves are not checked, only the pod templates inside them."""
    dirs = [] if crd_dir is None else [crd_dir] if isinstance(crd_dir, str | Path) else list(crd_dir)
    tagged = len(dirs) > 1
    validators = [(Path(d).name, crd_validators(str(d))) for d in dirs]
    out: list[Violation] = []
    for obj in objects:
        where = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        if str(obj.get("apiVersion", "")).startswith("ray.io/"):
            for release, by_kind in validators:
                out += [(rule, f"[{release}] {m}" if tagged else m) for rule, m in _crd_errors(obj, by_kind)]
            for template_where, template in embedded_pod_templates(obj):
                wrapped = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "check"},
                    "template": copy.deepcopy(template),
                }
                out += _core_errors(wrapped, template_where)
        else:
            out += _core_errors(obj, where)
    return out
