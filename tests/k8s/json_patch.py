"""RFC 6902 patches (add, remove, replace, test) on rendered objects, for the broken-manifest
fixtures of tests/fixtures/k8s/. Strict on purpose: a path that does not exist is an error, so a
fixture cannot silently stop breaking anything when the manifests change."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch operation that cannot be applied (missing path, failed test, unknown op)."""


def pointer(path: str) -> list[str]:
    """'/a/b~1c/0' -> ['a', 'b/c', '0'] (RFC 6901)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def walk(doc: Any, parts: list[str], where: str = "patch") -> Any:
    """The node of ``doc`` at the pointer ``parts``; raises :class:`PatchError` if there is none."""
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise PatchError(f"{where}: path element {part!r} not found")
    return doc


def apply_json6902(obj: dict, ops: list[dict], where: str = "patch") -> None:
    """Apply RFC 6902 operations (add, remove, replace, test) to ``obj`` in place."""
    for op in ops:
        kind, parts = op.get("op"), pointer(op.get("path", ""))
        if not parts:
            raise PatchError(f"{where}: operations on the whole document are not supported")
        parent, last = walk(obj, parts[:-1], where), parts[-1]
        if kind == "test":
            if walk(obj, parts, where) != op["value"]:
                raise PatchError(f"{where}: test failed at {op['path']}")
        elif kind == "remove":
            walk(parent, [last], where)
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind == "replace":
            walk(parent, [last], where)
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
                raise PatchError(f"{where}: bad list index {last!r} in {op['path']}")
        else:
            raise PatchError(f"{where}: JSON6902 op {kind!r} is not supported")
