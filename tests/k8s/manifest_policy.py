"""Security and hygiene rules for every pod in the rendered manifests (Ray pods included).

Each rule is a function ``objects -> [(rule, message)]``; an empty list means the manifests pass.
The rules mirror what the namespace's Pod Security "restricted" level and a reviewer would ask:

- ``non-root``: every container runs with runAsNonRoot (its own or the pod's), never as uid 0;
- ``no-privilege-escalation``: allowPrivilegeEscalation: false and not privileged, everywhere;
- ``pod-security``: capabilities drop ALL, a RuntimeDefault seccomp profile, no host namespaces
  or hostPath volumes (the rest of Pod Security "restricted");
- ``resources``: cpu and memory requests and limits on every container, requests <= limits,
  GPUs only as limits (requests, if given, equal);
- ``pinned-images``: every image has a tag (not ``latest``) or a digest;
- ``no-inline-secrets``: no Secret objects, no secret-looking env values, no credentials in
  URIs or command lines: credentials come from Secrets by name (secretKeyRef);
- ``env-refs``: every ``$(VAR)`` in a command, args or env value is defined in the container's
  env (Kubernetes silently leaves an undefined reference as literal text);
- ``services``: every Service selects a pod template and its named target ports exist;
- ``volumes``: every volume mount has a volume and every claim exists in the manifests.

The autoscaler sidecar that KubeRay adds to a head pod is checked as a container too (its
resources and securityContext come from ``autoscalerOptions``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .manifest_schema import embedded_pod_templates

Violation = tuple[str, str]
WORKLOAD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
SECRET_ENV_RE = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY", re.I)
URI_PASSWORD_RE = re.compile(r"://[^/\s:@]+:([^@\s/]+)@")
ASSIGNED_SECRET_RE = re.compile(
    r"(?i)(password|passwd|secret|token|api[_-]?key)\b\s*[=:]\s*['\"]?(?!\$\(|\$\{|\$[A-Za-z_])[^\s'\"]+"
)
SECRET_FLAG_RE = re.compile(r"(?i)^--?[\w-]*(password|passwd|secret|token)$")
VAR_REF_RE = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
QUANTITY_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """'reg:5000/a/b:1.2@sha256:..' -> ('reg:5000/a/b', '1.2', 'sha256:..')."""
    rest, _, digest = image.partition("@")
    name, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    return name, tag, digest or None


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def quantity(value: Any) -> float:
    """A Kubernetes quantity ('500m', '8Gi', 2) as a number of base units."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(value).strip())
    if not m or m.group(2) not in QUANTITY_SUFFIX:
        raise ValueError(f"unparseable quantity {value!r}")
    return float(m.group(1)) * QUANTITY_SUFFIX[m.group(2)]


def quantity_or_none(value: Any) -> float | None:
    """``quantity`` for checks that must not crash on garbage (the resources rule reports it)."""
    try:
        return quantity(value)
    except ValueError:
        return None


def pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) for workloads, and every pod template inside a Ray object."""
    if str(obj.get("apiVersion", "")).startswith("ray.io/"):
        return embedded_pod_templates(obj)
    if obj.get("kind") == "Pod":
        return [(name_of(obj), {"metadata": obj.get("metadata") or {}, "spec": obj.get("spec") or {}})]
    path = WORKLOAD_TEMPLATE_PATHS.get(obj.get("kind", ""))
    if not path:
        return []
    node: Any = obj
    for key in path:
        node = (node or {}).get(key)
    return [(name_of(obj), node)] if isinstance(node, dict) else []


def ray_cluster_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of a RayCluster or of a RayJob that creates its cluster."""
    if obj.get("kind") == "RayCluster":
        return [(name_of(obj), obj.get("spec") or {})]
    if obj.get("kind") == "RayJob" and (obj.get("spec") or {}).get("rayClusterSpec"):
        return [(name_of(obj), obj["spec"]["rayClusterSpec"])]
    return []


def containers(obj: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, container, pod spec) for every container, init container and autoscaler sidecar."""
    for where, template in pod_templates(obj):
        spec = template.get("spec") or {}
        for key in ("initContainers", "containers"):
            for c in spec.get(key) or []:
                yield f"{where} {key[:-1]} {c.get('name')}", c, spec
    for where, cluster in ray_cluster_specs(obj):
        if cluster.get("enableInTreeAutoscaling"):
            opts = cluster.get("autoscalerOptions") or {}
            head_spec = ((cluster.get("headGroupSpec") or {}).get("template") or {}).get("spec") or {}
            sidecar = {
                "name": "autoscaler",
                "resources": opts.get("resources"),
                "securityContext": opts.get("securityContext"),
                "env": opts.get("env"),
                "volumeMounts": opts.get("volumeMounts"),
            }
            if opts.get("image"):
                sidecar["image"] = opts["image"]
            yield f"{where} autoscaler (autoscalerOptions)", sidecar, head_spec


def _effective(container: dict, pod_spec: dict, key: str) -> Any:
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod_spec.get("securityContext") or {}).get(key)


# --- rules -----------------------------------------------------------------------------------------
def check_non_root(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, pod in containers(obj):
            if _effective(c, pod, "runAsNonRoot") is not True:
                out.append(("non-root", f"{where}: runAsNonRoot is not true (container or pod)"))
            if _effective(c, pod, "runAsUser") == 0:
                out.append(("non-root", f"{where}: runAsUser is 0 (root)"))
    return out


def check_privilege_escalation(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, _ in containers(obj):
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(("no-privilege-escalation", f"{where}: allowPrivilegeEscalation is not false"))
            if sc.get("privileged"):
                out.append(("no-privilege-escalation", f"{where}: privileged container"))
    return out


def check_pod_security(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, pod in containers(obj):
            caps = (c.get("securityContext") or {}).get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                out.append(("pod-security", f"{where}: capabilities.drop does not contain ALL"))
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                out.append(("pod-security", f"{where}: adds capabilities {caps['add']}"))
            seccomp = (_effective(c, pod, "seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                out.append(("pod-security", f"{where}: seccompProfile is {seccomp!r}, not RuntimeDefault"))
        for where, template in pod_templates(obj):
            spec = template.get("spec") or {}
            for key in ("hostNetwork", "hostPID", "hostIPC"):
                if spec.get(key):
                    out.append(("pod-security", f"{where}: {key} is true"))
            for vol in spec.get("volumes") or []:
                if "hostPath" in vol:
                    out.append(("pod-security", f"{where}: hostPath volume {vol.get('name')}"))
    return out


def check_resources(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, _ in containers(obj):
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for kind in ("cpu", "memory"):
                if kind not in req or kind not in lim:
                    out.append(("resources", f"{where}: {kind} needs both a request and a limit"))
                    continue
                try:
                    if quantity(req[kind]) > quantity(lim[kind]):
                        out.append(("resources", f"{where}: {kind} request {req[kind]} > limit {lim[kind]}"))
                except ValueError as e:
                    out.append(("resources", f"{where}: {e}"))
            for kind in set(req) | set(lim):
                if kind.endswith("/gpu") and (
                    kind not in lim or str(req.get(kind, lim[kind])) != str(lim[kind])
                ):
                    out.append(("resources", f"{where}: {kind} must be a limit (a request, if any, equal)"))
    return out


def check_images(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, _ in containers(obj):
            if "image" not in c and c.get("name") == "autoscaler":
                continue  # the autoscaler runs the head's image unless autoscalerOptions.image is set
            name, tag, digest = split_image(str(c.get("image") or ""))
            if not name:
                out.append(("pinned-images", f"{where}: no image"))
            elif digest is None and (tag is None or tag == "latest"):
                out.append(
                    (
                        "pinned-images",
                        f"{where}: image {c.get('image')!r} is not pinned (tag or digest, not latest)",
                    )
                )
    return out


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}/{i}")
    elif isinstance(node, str):
        yield path, node


def check_inline_secrets(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        if obj.get("kind") == "Secret":
            out.append(
                ("no-inline-secrets", f"{name_of(obj)}: Secrets are created out of band, not in manifests")
            )
        for where, c, _ in containers(obj):
            for env in c.get("env") or []:
                if SECRET_ENV_RE.search(str(env.get("name", ""))) and "value" in env:
                    out.append(
                        (
                            "no-inline-secrets",
                            f"{where}: env {env['name']} has a literal value; use valueFrom.secretKeyRef",
                        )
                    )
            argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            for flag, value in zip(argv, argv[1:]):
                if SECRET_FLAG_RE.match(flag) and not value.startswith("$("):
                    out.append(("no-inline-secrets", f"{where}: {flag} is followed by a literal value"))
        for path, text in _strings(obj):
            out += [("no-inline-secrets", f"{name_of(obj)} {path}: {why}") for why in literal_secrets(text)]
    return out


def literal_secrets(text: str) -> list[str]:
    """Why ``text`` looks like it holds a credential: a password in a URI that is not a $(VAR)
    reference, or ``password=...`` / ``token: ...`` with a literal value. Empty when it does not."""
    text = text.replace("automountServiceAccountToken", "")  # a Pod field, not a credential
    found = [
        "a URI with a literal password"
        for m in URI_PASSWORD_RE.finditer(text)
        if not re.fullmatch(r"\$\([A-Za-z_][A-Za-z0-9_]*\)", m.group(1))
    ]
    if ASSIGNED_SECRET_RE.search(text):
        found.append("a literal password/secret/token")
    return found


def check_env_refs(objects: list[dict]) -> list[Violation]:
    out = []
    for obj in objects:
        for where, c, _ in containers(obj):
            if c.get("envFrom"):
                continue  # names from a Secret / ConfigMap are not known here
            defined: list[str] = []
            for env in c.get("env") or []:
                for ref in VAR_REF_RE.findall(str(env.get("value", ""))):
                    if ref not in defined:
                        out.append(
                            ("env-refs", f"{where}: env {env.get('name')} uses $({ref}) before it is defined")
                        )
                defined.append(env.get("name"))
            for arg in (c.get("command") or []) + (c.get("args") or []):
                for ref in VAR_REF_RE.findall(str(arg)):
                    if ref not in defined:
                        out.append(("env-refs", f"{where}: $({ref}) in its command line is not in its env"))
    return out


def check_services(objects: list[dict]) -> list[Violation]:
    out = []
    templates = [
        (obj, t)
        for obj in objects
        if obj.get("kind") in WORKLOAD_TEMPLATE_PATHS or obj.get("kind") == "Pod"
        for _, t in pod_templates(obj)
    ]
    for svc in (o for o in objects if o.get("kind") == "Service"):
        selector = (svc.get("spec") or {}).get("selector")
        if not selector:
            continue
        ns = (svc.get("metadata") or {}).get("namespace")
        matched = [
            t
            for obj, t in templates
            if (obj.get("metadata") or {}).get("namespace") == ns
            and selector.items() <= ((t.get("metadata") or {}).get("labels") or {}).items()
        ]
        if not matched:
            out.append(("services", f"{name_of(svc)}: selector {selector} matches no pod template"))
            continue
        ports = {
            p.get("name")
            for t in matched
            for c in (t.get("spec") or {}).get("containers") or []
            for p in c.get("ports") or []
        }
        for port in svc["spec"].get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and target not in ports:
                out.append(
                    ("services", f"{name_of(svc)}: targetPort {target!r} is no container port of its pods")
                )
    return out


def check_volumes(objects: list[dict]) -> list[Violation]:
    out = []
    claims = {
        ((o.get("metadata") or {}).get("namespace"), o["metadata"]["name"])
        for o in objects
        if o.get("kind") == "PersistentVolumeClaim"
    }
    for obj in objects:
        ns = (obj.get("metadata") or {}).get("namespace")
        templates_from_sts = {
            t["metadata"]["name"] for t in (obj.get("spec") or {}).get("volumeClaimTemplates") or []
        }
        for where, template in pod_templates(obj):
            spec = template.get("spec") or {}
            volumes = {v.get("name"): v for v in spec.get("volumes") or []}
            for vol in volumes.values():
                claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and (ns, claim) not in claims:
                    out.append(("volumes", f"{where}: claim {claim!r} is not among the manifests' PVCs"))
            for key in ("initContainers", "containers"):
                for c in spec.get(key) or []:
                    for mount in c.get("volumeMounts") or []:
                        if mount.get("name") not in volumes and mount.get("name") not in templates_from_sts:
                            out.append(
                                (
                                    "volumes",
                                    f"{where} {c.get('name')}: mount of undefined volume "
                                    f"{mount.get('name')!r}",
                                )
                            )
    return out


RULES = (
    check_non_root,
    check_privilege_escalation,
    check_pod_security,
    check_resources,
    check_images,
    check_inline_secrets,
    check_env_refs,
    check_services,
    check_volumes,
)


def policy_violations(objects: list[dict]) -> list[Violation]:
    return [v for rule in RULES for v in rule(objects)]
