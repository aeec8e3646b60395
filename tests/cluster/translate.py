"""From a rendered manifest to the same command on 127.0.0.1: what the cluster rehearsal runs.

Kubernetes runs a container's ``command + args`` with ``$(VAR)`` expanded from its ``env``
(values or Secret keys); here the same argv runs as a local process, with three substitutions
and nothing else:

- a Service endpoint (``mlflow:5000``, ``postgres:5432`` in a URL, libpq's PGHOST/PGPORT) becomes
  the ``127.0.0.1:<port>`` of the local process that stands for it (``Endpoints``);
- a mount path of a volume (``/mnt/...``) becomes a folder under the rehearsal's root;
- ``python`` is the interpreter running the tests (the image's python, with the project installed).

The sweep command is the RayJob's entrypoint with its flags kept; only the sizes (data set,
targets, budget) are overridden to make a small sweep (``sweep_argv``).
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` as the kubelet expands it: a defined variable's value, an undefined reference
    left as it is, ``$$`` an escaped ``$``."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return VAR_REF.sub(one, text)


def container_env(container: dict, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's ``env`` as the kubelet builds it: literal values (expanded against the
    variables before them) and ``secretKeyRef`` values from ``secrets`` ({name: {key: value}})."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
        elif "value" in item:
            env[item["name"]] = k8s_expand(str(item["value"]), env)
        else:
            raise ValueError(f"env {item.get('name')!r}: only value and secretKeyRef are supported here")
    return env


class Endpoints:
    """Service endpoints of the manifests -> local ones; paths under /mnt -> the rehearsal root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.local: dict[tuple[str, int], int] = {}  # (service, port) -> local port

    def add(self, service: str, port: int, local_port: int) -> None:
        self.local[(service, int(port))] = int(local_port)

    def url(self, text: str) -> str:
        """``//mlflow:5000`` / ``@postgres:5432`` in URLs -> ``//127.0.0.1:<port>``."""
        for (service, port), local in self.local.items():
            text = re.sub(rf"(?<=[/@]){re.escape(service)}:{port}\b", f"127.0.0.1:{local}", text)
        return text

    def path(self, text: str) -> str:
        """An absolute /mnt/... path -> the same path under the root (a volume mount stands-in)."""
        return str(self.root / text.lstrip("/")) if text.startswith("/mnt/") else text

    def arg(self, text: str) -> str:
        return self.path(self.url(text))

    def libpq(self, env: dict[str, str]) -> dict[str, str]:
        """PGHOST naming a Service (and its PGPORT) -> the local endpoint."""
        host, port = env.get("PGHOST"), int(env.get("PGPORT", "5432"))
        if host is not None and (host, port) in self.local:
            return {**env, "PGHOST": "127.0.0.1", "PGPORT": str(self.local[(host, port)])}
        return env


def config_map_files(
    pod_spec: dict,
    container: dict,
    env: dict[str, str],
    objects: list[dict],
    folder: Path,
    endpoints: Endpoints,
) -> dict[str, str]:
    """The ConfigMap volumes that ``container`` mounts, as files under ``folder/<volume>`` (with
    Service endpoints made local, as in arguments); returns ``env`` with every value under a
    mount path pointed at those files (MLflow's MLFLOW_AUTH_CONFIG_PATH)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        cm = (volumes.get(mount["name"]) or {}).get("configMap")
        if cm is None:
            continue
        (obj,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm["name"]]
        local = Path(folder) / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        for name, text in (obj.get("data") or {}).items():
            (local / name).write_text(endpoints.url(text))
        prefix = mount["mountPath"].rstrip("/") + "/"
        env = {k: f"{local}/{v[len(prefix) :]}" if v.startswith(prefix) else v for k, v in env.items()}
    return env


def local_argv(container: dict, env: dict[str, str], endpoints: Endpoints) -> list[str]:
    """The container's ``command + args`` for a local process."""
    argv = [k8s_expand(str(a), env) for a in (container.get("command") or []) + (container.get("args") or [])]
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return [endpoints.arg(a) for a in argv]


def flag_values(argv: list[str]) -> dict[str, str | None]:
    """{'--flag': value or None (a switch)} of a flag list such as the sweep's entrypoint."""
    out: dict[str, str | None] = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[i + 1] if i + 1 < len(argv) else None
            out[word] = following if following is not None and not following.startswith("--") else None
    return out


def sweep_argv(entrypoint: str, overrides: dict[str, str], endpoints: Endpoints) -> list[str]:
    """The RayJob entrypoint's words with every flag kept, the values of ``overrides`` replaced
    (or added), and endpoints and paths made local. Raises if the entrypoint is not the sweep."""
    words = shlex.split(entrypoint)
    if words[:3] != ["python", "-m", "orchestrator.sweep"]:
        raise ValueError(f"the entrypoint is not the sweep: {entrypoint!r}")
    flags = flag_values(words[3:])
    for flag, value in overrides.items():
        flags[flag] = value
    argv = [sys.executable, "-m", "orchestrator.sweep"]
    for flag, value in flags.items():
        argv += [flag] if value is None else [flag, endpoints.arg(value)]
    return argv


def ray_start_params(params: dict, endpoints: Endpoints) -> list[str]:
    """A group's ``rayStartParams`` as ``ray start`` flags; the dashboard binds to 127.0.0.1."""
    out = []
    for key, value in params.items():
        value = str(value)
        if key == "dashboard-host":
            value = "127.0.0.1"
        out += [f"--{key}", endpoints.arg(value)]
    return out
