"""JSON Patch (RFC 6902) for kustomize overlays: add, remove, replace and test.

Pure and strict: a path that does not exist (for remove, replace, test, or the parent of an
add) is an error naming the path, as in kustomize, never a silent no-op.
"""

from __future__ import annotations

import copy
from typing import Any

OPS = ("add", "remove", "replace", "test")


class PatchError(ValueError):
    """A patch operation cannot apply to the document."""


def parse_pointer(pointer: str) -> list[str]:
    """Split a JSON Pointer (RFC 6901) into unescaped tokens (``~1`` is ``/``, ``~0`` is ``~``)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"path {pointer!r} must start with '/'")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list[Any], token: str, pointer: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"path {pointer!r}: {token!r} is not an array index")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchError(f"path {pointer!r}: index {i} is out of range (length {len(container)})")
    return i


def _parent(doc: Any, tokens: list[str], pointer: str) -> Any:
    node = doc
    for depth, token in enumerate(tokens[:-1]):
        where = "/" + "/".join(tokens[: depth + 1])
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path {pointer!r}: {where!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer, allow_end=False)]
        else:
            raise PatchError(f"path {pointer!r}: {where!r} is not an object or array")
    return node


def apply_patch(doc: Any, operations: list[dict[str, Any]]) -> Any:
    """Return a patched copy of ``doc``; ``doc`` itself is not changed.

    Raises:
        PatchError: an unknown or malformed operation, a missing path, a failed ``test``.
    """
    result = copy.deepcopy(doc)
    for n, op in enumerate(operations):
        if not isinstance(op, dict) or op.get("op") not in OPS or "path" not in op:
            raise PatchError(f"operation {n}: expected {{op: {'|'.join(OPS)}, path: ...}}, got {op!r}")
        pointer = op["path"]
        tokens = parse_pointer(pointer)
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {n} ({op['op']} {pointer}): no value")
        if not tokens:
            if op["op"] == "test":
                if result != op["value"]:
                    raise PatchError(f"operation {n}: test of the whole document failed")
                continue
            if op["op"] == "remove":
                raise PatchError(f"operation {n}: cannot remove the whole document")
            result = copy.deepcopy(op["value"])
            continue
        parent, last = _parent(result, tokens, pointer), tokens[-1]
        if isinstance(parent, dict):
            if op["op"] != "add" and last not in parent:
                raise PatchError(f"operation {n} ({op['op']}): path {pointer!r} does not exist")
            if op["op"] in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[last]
            elif parent[last] != op["value"]:
                raise PatchError(
                    f"operation {n}: test failed at {pointer!r}: {parent[last]!r} != {op['value']!r}"
                )
        elif isinstance(parent, list):
            i = _index(parent, last, pointer, allow_end=op["op"] == "add")
            if op["op"] == "add":
                parent.insert(i, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                parent[i] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[i]
            elif parent[i] != op["value"]:
                raise PatchError(
                    f"operation {n}: test failed at {pointer!r}: {parent[i]!r} != {op['value']!r}"
                )
        else:
            raise PatchError(f"operation {n}: the parent of {pointer!r} is not an object or array")
    return result
