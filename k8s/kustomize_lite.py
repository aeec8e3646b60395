"""A small, strict renderer for the subset of kustomize that the manifests in ``k8s/`` use.

Why it exists: the tests must render every overlay offline, in CI, where ``kubectl`` may be
missing (Debian's ``kubernetes-client`` embeds kustomize v2, which predates ``patches:`` and
components). Where a ``kubectl`` with kustomize >= v4 is installed, ``tests/test_k8s_render.py``
renders every overlay with both and compares the objects, so this file cannot drift from the
real tool unnoticed.

Supported (anything else raises :class:`UnsupportedKustomization` instead of being ignored):

- ``resources``: YAML files (several documents each) and directories holding a kustomization;
- ``components`` (``kind: Component``): their resources are added, then their patches run over
  everything accumulated so far, as in kustomize;
- ``patches`` (``path:`` or inline ``patch:``): a YAML list is a JSON6902 patch (add, remove,
  replace, test) applied to the objects its ``target`` selects; a mapping is a strategic-merge
  patch limited to map merging and ``$patch: delete`` of a whole object (no lists: use JSON6902);
- ``namespace`` and ``images`` (``newName``, ``newTag``, ``digest``).

A patch or image entry that matches nothing is an error here (kustomize is laxer), so a renamed
object cannot silently leave an overlay without effect.

Usage: ``python k8s/kustomize_lite.py k8s/overlays/gpu`` prints the rendered YAML.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches"}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
}
# Kinds whose namespaced references (subjects, webhooks...) kustomize also rewrites: not handled here.
UNHANDLED_NAMESPACE_KINDS = {
    "RoleBinding",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
}

Obj = dict[str, Any]


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


class KustomizeError(ValueError):
    """The kustomization is wrong (missing file, unmatched patch, duplicate object...)."""


def render(path: str | Path) -> list[Obj]:
    """Render the kustomization in the directory ``path`` into a list of objects."""
    return _build(Path(path).resolve(), expect_kind="Kustomization")


def object_id(obj: Obj) -> tuple[str, str, str, str]:
    """(apiVersion, kind, namespace, name): the identity kustomize uses for objects."""
    meta = obj.get("metadata") or {}
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def load_documents(path: Path) -> list[Obj]:
    """The non-empty YAML documents of a file; each must be a mapping with apiVersion and kind."""
    with open(path) as f:
        docs = [
            d for d in yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d is not None
        ]
    for d in docs:
        if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
            raise KustomizeError(f"{path}: every document must be a mapping with apiVersion and kind")
    return docs


# --- the build -----------------------------------------------------------------------------------
def _read_kustomization(folder: Path, expect_kind: str) -> Obj:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            with open(folder / name) as f:
                k = yaml.safe_load(f) or {}
            break
    else:
        raise KustomizeError(f"{folder}: no kustomization file ({', '.join(KUSTOMIZATION_FILES)})")
    unknown = sorted(set(k) - SUPPORTED_FIELDS)
    if unknown:
        raise UnsupportedKustomization(
            f"{folder}: unsupported kustomization fields {unknown}; supported: {sorted(SUPPORTED_FIELDS)}"
        )
    kind = k.get("kind", "Kustomization")
    if kind != expect_kind:
        raise KustomizeError(f"{folder}: kind {kind!r} where a {expect_kind} was expected")
    return k


def _build(folder: Path, expect_kind: str, objects: list[Obj] | None = None) -> list[Obj]:
    """Kustomizations start from nothing; a component continues from its parent's ``objects``."""
    k = _read_kustomization(folder, expect_kind)
    objects = list(objects or [])
    for entry in k.get("resources") or []:
        target = (folder / entry).resolve()
        if target.is_dir():
            objects.extend(_build(target, expect_kind="Kustomization"))
        elif target.is_file():
            objects.extend(load_documents(target))
        else:
            raise KustomizeError(f"{folder}: resource {entry!r} does not exist")
        _check_unique(objects, folder)
    for entry in k.get("components") or []:
        objects = _build((folder / entry).resolve(), expect_kind="Component", objects=objects)
    for patch in k.get("patches") or []:
        objects = _apply_patch(objects, patch, folder)
    if k.get("namespace"):
        _set_namespace(objects, k["namespace"])
    for image in k.get("images") or []:
        _set_image(objects, image, folder)
    _check_unique(objects, folder)
    return objects


def _check_unique(objects: list[Obj], folder: Path) -> None:
    seen: set[tuple[str, ...]] = set()
    for obj in objects:
        oid = object_id(obj)
        if oid in seen:
            raise KustomizeError(f"{folder}: object {oid} is defined twice")
        seen.add(oid)


# --- patches -------------------------------------------------------------------------------------
def _apply_patch(objects: list[Obj], entry: Obj, folder: Path) -> list[Obj]:
    unknown = sorted(set(entry) - {"path", "patch", "target"})
    if unknown:
        raise UnsupportedKustomization(f"{folder}: unsupported patch fields {unknown} (options, ...)")
    if "path" in entry:
        text = (folder / entry["path"]).read_text()
        where = f"{folder}/{entry['path']}"
    else:
        text, where = entry["patch"], f"{folder}: inline patch"
    body = yaml.safe_load(text)
    if isinstance(body, list):
        if "target" not in entry:
            raise KustomizeError(f"{where}: a JSON6902 patch needs a target")
        hits = [o for o in objects if _selected(o, entry["target"])]
        if not hits:
            raise KustomizeError(f"{where}: target {entry['target']} matches no object")
        for obj in hits:
            apply_json6902(obj, body, where)
        return objects
    if not isinstance(body, dict):
        raise KustomizeError(f"{where}: a patch is a list (JSON6902) or a mapping (strategic merge)")
    selector = entry.get("target") or {
        "kind": body.get("kind"),
        "name": (body.get("metadata") or {}).get("name"),
    }
    hits = [o for o in objects if _selected(o, selector)]
    if not hits:
        raise KustomizeError(f"{where}: strategic-merge patch matches no object ({selector})")
    if body.get("$patch") == "delete":
        return [o for o in objects if not any(o is h for h in hits)]
    for obj in hits:
        _merge_maps(obj, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}, where)
    return objects


def _selected(obj: Obj, target: Obj) -> bool:
    unknown = sorted(set(target) - {"kind", "name", "group", "version", "namespace"})
    if unknown:
        raise UnsupportedKustomization(f"unsupported patch target fields {unknown}")
    api = obj.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    meta = obj.get("metadata") or {}
    wanted = {
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "group": group,
        "version": version,
        "namespace": meta.get("namespace", ""),
    }
    # kustomize matches name (and the other fields) as anchored regular expressions
    return all(
        re.fullmatch(str(pattern), str(wanted[key] or ""))
        for key, pattern in target.items()
        if pattern is not None
    )


def _merge_maps(dst: Obj, src: Obj, where: str) -> None:
    for key, value in src.items():
        if isinstance(value, list):
            raise UnsupportedKustomization(
                f"{where}: lists in strategic-merge patches ({key!r}) are not "
                "supported here; use a JSON6902 patch"
            )
        if value is None:
            dst.pop(key, None)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_maps(dst[key], value, where)
        else:
            dst[key] = copy.deepcopy(value)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], where: str) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise KustomizeError(f"{where}: path element {part!r} not found")
    return doc


def apply_json6902(obj: Obj, ops: list[Obj], where: str = "patch") -> None:
    """Apply RFC 6902 operations (add, remove, replace, test) to ``obj`` in place."""
    for op in ops:
        kind, parts = op.get("op"), _pointer(op.get("path", ""))
        if not parts:
            raise KustomizeError(f"{where}: operations on the whole document are not supported")
        parent, last = _walk(obj, parts[:-1], where), parts[-1]
        if kind == "test":
            if _walk(obj, parts, where) != op["value"]:
                raise KustomizeError(f"{where}: test failed at {op['path']}")
        elif kind == "remove":
            _walk(parent, [last], where)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "replace":
            _walk(parent, [last], where)
            parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        elif kind == "add":
            value = copy.deepcopy(op["value"])
            if isinstance(parent, dict):
                parent[last] = value
            elif last == "-":
                parent.append(value)
            elif last.isdigit() and int(last) <= len(parent):
                parent.insert(int(last), value)
            else:
                raise KustomizeError(f"{where}: bad list index {last!r} in {op['path']}")
        else:
            raise UnsupportedKustomization(f"{where}: JSON6902 op {kind!r} is not supported")


# --- namespace and images ------------------------------------------------------------------------
def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        if obj["kind"] in UNHANDLED_NAMESPACE_KINDS:
            raise UnsupportedKustomization(f"namespace transformer on {obj['kind']} is not supported here")
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            obj.setdefault("metadata", {})["namespace"] = namespace


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """'reg:5000/a/b:1.2@sha256:..' -> ('reg:5000/a/b', '1.2', 'sha256:..')."""
    rest, _, digest = image.partition("@")
    name, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    return name, tag, digest or None


def _containers(node: Any):
    """Every container mapping under any ``containers`` / ``initContainers`` list, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            yield from _containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _containers(item)


def _set_image(objects: list[Obj], entry: Obj, folder: Path) -> None:
    unknown = sorted(set(entry) - {"name", "newName", "newTag", "digest"})
    if unknown:
        raise UnsupportedKustomization(f"{folder}: unsupported images fields {unknown}")
    hits = 0
    for obj in objects:
        for container in _containers(obj):
            name, tag, digest = split_image(str(container.get("image", "")))
            if name != entry["name"]:
                continue
            hits += 1
            name = entry.get("newName", name)
            if "digest" in entry:
                container["image"] = f"{name}@{entry['digest']}"
            else:
                tag = entry.get("newTag", tag)
                container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    if hits == 0:
        raise KustomizeError(f"{folder}: images entry {entry['name']!r} matches no container")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python k8s/kustomize_lite.py DIR\n")
        return 2
    yaml.safe_dump_all(render(argv[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
