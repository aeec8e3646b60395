"""Hardening rules for every pod of the rendered manifests (issue #19, "A hardened cluster").

- ``read-only-root``: every container (init containers and the autoscaler sidecar included) has
  readOnlyRootFilesystem: true and an emptyDir on /tmp (Ray writes /tmp/ray, Python and MLflow
  their temporary files); PostgreSQL also on /var/run/postgresql (its socket and lock file);
- ``service-account-token``: no pod mounts a service-account token (automountServiceAccountToken:
  false); a projected token volume is mounted by the KubeRay autoscaler sidecar only (it scales
  the workers through the Kubernetes API);
- ``ephemeral-storage``: every container requests and limits ephemeral-storage (request <=
  limit) and every emptyDir has a sizeLimit, so a runaway log or spill evicts its own pod only;
- ``head-eviction``: every Ray head is neither evicted by a node autoscaler (the annotation
  ``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"``) nor by a drain (a
  PodDisruptionBudget of its namespace that selects it and allows no eviction).
"""

from __future__ import annotations

from .manifest_policy import Violation, containers, pod_templates, quantity_or_none, ray_cluster_specs
from .operations_policy import _blocks_eviction, _selects
from .ray_policy import namespace_of

SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def _volumes(pod_spec: dict) -> dict[str, dict]:
    return {v.get("name"): v for v in pod_spec.get("volumes") or []}


def _mounted_volume(c: dict, pod_spec: dict, path: str) -> dict | None:
    """The volume mounted at ``path`` in container ``c`` (None when nothing is)."""
    for m in c.get("volumeMounts") or []:
        if m.get("mountPath", "").rstrip("/") == path:
            return _volumes(pod_spec).get(m.get("name")) or {}
    return None


def _is_postgres(c: dict) -> bool:
    """The official PostgreSQL image, by tag or by digest."""
    return str(c.get("image") or "").split("/")[-1].split("@")[0].split(":")[0] == "postgres"


def check_read_only_root(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, pod in containers(obj):
            if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
                out.append(("read-only-root", f"{where}: readOnlyRootFilesystem is not true"))
            writable = ["/tmp"] + (["/var/run/postgresql"] if _is_postgres(c) else [])
            for path in writable:
                vol = _mounted_volume(c, pod, path)
                if vol is None or "emptyDir" not in vol:
                    out.append(("read-only-root", f"{where}: no emptyDir mounted on {path}"))
    return out


def _token_volumes(pod_spec: dict) -> set[str]:
    return {
        name
        for name, v in _volumes(pod_spec).items()
        if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources") or [])
    }


def check_service_account_token(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, template in pod_templates(obj):
            if (template.get("spec") or {}).get("automountServiceAccountToken") is not False:
                out.append(("service-account-token", f"{where}: automountServiceAccountToken is not false"))
        for where, c, pod in containers(obj):
            tokens = _token_volumes(pod)
            mounted = {m.get("name") for m in c.get("volumeMounts") or []} & tokens
            if mounted and not where.endswith("autoscaler (autoscalerOptions)"):
                out.append(
                    ("service-account-token", f"{where}: mounts the service-account token {sorted(mounted)}")
                )
    return out


def check_ephemeral_storage(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, _ in containers(obj):
            res = c.get("resources") or {}
            req = (res.get("requests") or {}).get("ephemeral-storage")
            lim = (res.get("limits") or {}).get("ephemeral-storage")
            if req is None or lim is None:
                out.append(("ephemeral-storage", f"{where}: ephemeral-storage needs a request and a limit"))
            elif (quantity_or_none(req) or 0) > (quantity_or_none(lim) or 0):
                out.append(("ephemeral-storage", f"{where}: ephemeral-storage request {req} > limit {lim}"))
        for where, template in pod_templates(obj):
            for name, v in _volumes(template.get("spec") or {}).items():
                if "emptyDir" in v and not (v["emptyDir"] or {}).get("sizeLimit"):
                    out.append(("ephemeral-storage", f"{where}: emptyDir {name} has no sizeLimit"))
    return out


def check_head_eviction(objects: list[dict]) -> list[Violation]:
    out = []
    budgets = [o for o in objects if o.get("kind") == "PodDisruptionBudget"]
    for obj in objects:
        for where, cluster in ray_cluster_specs(obj):
            head = (cluster.get("headGroupSpec") or {}).get("template") or {}
            meta = head.get("metadata") or {}
            if str((meta.get("annotations") or {}).get(SAFE_TO_EVICT)) != "false":
                out.append(("head-eviction", f'{where}: the head template lacks {SAFE_TO_EVICT}: "false"'))
            labels = meta.get("labels") or {}
            if not any(
                namespace_of(b) == namespace_of(obj)
                and labels
                and _selects((b.get("spec") or {}).get("selector"), labels)
                and _blocks_eviction(b, 1)
                for b in budgets
            ):
                out.append(
                    (
                        "head-eviction",
                        f"{where}: no PodDisruptionBudget selects the head and blocks evictions",
                    )
                )
    return out


def hardening_violations(objects: list[dict]) -> list[Violation]:
    return (
        check_read_only_root(objects)
        + check_service_account_token(objects)
        + check_ephemeral_storage(objects)
        + check_head_eviction(objects)
    )
