"""Render a kustomization offline: the subset of kustomize that images/k8s uses, no more.

No ``kustomize`` binary ships on PyPI or Debian, so CI renders the overlays with this. The
subset, with kustomize's semantics:

- ``resources``: YAML files (inside the kustomization's folder, kustomize's load restriction)
  and folders holding another kustomization (rendered first, anywhere in the repository);
  two resources with the same kind, namespace and name are an error.
- ``configMapGenerator`` with ``files`` (``key=path`` or ``path``), ``literals`` and an
  optional ``namespace``; only with ``generatorOptions.disableNameSuffixHash: true`` (a hash
  suffix renames the ConfigMap and every reference to it, which this renderer does not do).
- ``patches`` holding JSON 6902 operations with a ``target`` (kind, name, namespace, group,
  version; name and namespace are anchored regular expressions, as in kustomize). Stricter than
  kustomize: a target that matches nothing is an error (a misspelt name would silently patch
  nothing). Strategic merge patches are refused: on custom resources kustomize replaces whole
  lists, which is rarely what a patch author means.
- ``images``: ``name`` -> ``newName`` / ``newTag`` / ``digest`` on every ``image`` of every
  ``containers`` and ``initContainers`` list, at any depth (so RayCluster and RayJob pod
  templates too).

Any other field is refused with a message, so an overlay can never use a feature this renderer
would silently skip. Where kubectl is installed, tests compare the output with
``kubectl kustomize``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from support.manifests.jsonpatch import PatchError, apply_patch

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "images",
    "configMapGenerator",
    "generatorOptions",
}
_TARGET_FIELDS = {"kind", "name", "namespace", "group", "version"}


class KustomizeError(ValueError):
    """A kustomization cannot be rendered (by this subset, or at all)."""


@dataclass(frozen=True)
class ResourceId:
    """How kustomize tells resources apart."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}{'.' + self.group if self.group else ''} {ns}{self.name}"


def resource_id(doc: dict[str, Any]) -> ResourceId:
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    meta = doc.get("metadata") or {}
    return ResourceId(
        group, str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))
    )


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a YAML file; each must be a mapping with kind and name."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise KustomizeError(f"{path}: cannot read: {exc}") from None
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or "kind" not in doc or not (doc.get("metadata") or {}).get("name"):
            raise KustomizeError(f"{path}: document {i} is not a resource (kind and metadata.name)")
    return docs


def _kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise KustomizeError(f"{folder}: no kustomization.yaml")


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def render(folder: Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``folder`` into a list of resources (kustomize's ``build``).

    Raises:
        KustomizeError: an unsupported field, a missing file, a duplicate resource, a patch
            whose target matches nothing or whose operations do not apply.
    """
    kfile = _kustomization_file(folder)
    spec = yaml.safe_load(kfile.read_text()) or {}
    if not isinstance(spec, dict):
        raise KustomizeError(f"{kfile}: expected a mapping")
    unsupported = sorted(set(spec) - SUPPORTED_FIELDS)
    if unsupported:
        raise KustomizeError(
            f"{kfile}: uses {', '.join(unsupported)}, which the offline renderer "
            f"(tests/support.manifests/kustomize.py) does not support; "
            f"supported: {', '.join(sorted(SUPPORTED_FIELDS))}"
        )
    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = folder / str(entry)
        if path.is_dir():
            resources.extend(render(path))
        elif path.is_file():
            if not _inside(folder, path):
                raise KustomizeError(
                    f"{kfile}: resource file {entry} is outside {folder} (kustomize's load "
                    f"restriction); move it, or list its folder as a kustomization"
                )
            resources.extend(load_yaml_documents(path))
        else:
            raise KustomizeError(f"{kfile}: resource {entry} does not exist")
    resources.extend(_generate_config_maps(folder, kfile, spec))
    _refuse_duplicates(kfile, resources)
    for n, patch in enumerate(spec.get("patches") or []):
        resources = _apply_patch_entry(folder, kfile, n, patch, resources)
    for image in spec.get("images") or []:
        resources = [_set_images(doc, image, kfile) for doc in resources]
    return resources


def _refuse_duplicates(kfile: Path, resources: list[dict[str, Any]]) -> None:
    seen: set[ResourceId] = set()
    for doc in resources:
        rid = resource_id(doc)
        if rid in seen:
            raise KustomizeError(f"{kfile}: {rid} is defined twice")
        seen.add(rid)


def _generate_config_maps(folder: Path, kfile: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    generators = spec.get("configMapGenerator") or []
    if not generators:
        return []
    options = spec.get("generatorOptions") or {}
    if set(options) - {"disableNameSuffixHash"} or options.get("disableNameSuffixHash") is not True:
        raise KustomizeError(
            f"{kfile}: configMapGenerator needs generatorOptions: {{disableNameSuffixHash: true}} "
            f"(and nothing else) here: a hash suffix renames the ConfigMap and every reference to it"
        )
    out = []
    for gen in generators:
        if (
            not isinstance(gen, dict)
            or set(gen) - {"name", "namespace", "files", "literals"}
            or "name" not in gen
        ):
            raise KustomizeError(
                f"{kfile}: configMapGenerator entry {gen!r}: use name, namespace, files, literals"
            )
        data: dict[str, str] = {}
        for item in gen.get("files") or []:
            key, sep, rel = str(item).partition("=")
            key, rel = (key, rel) if sep else (Path(key).name, key)
            path = folder / rel
            if not path.is_file() or not _inside(folder, path):
                raise KustomizeError(
                    f"{kfile}: configMapGenerator {gen['name']}: file {rel} is not in {folder}"
                )
            data[key] = path.read_text()
        for item in gen.get("literals") or []:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise KustomizeError(
                    f"{kfile}: configMapGenerator {gen['name']}: literal {item!r} needs KEY=VALUE"
                )
            data[key] = value
        meta: dict[str, Any] = {"name": gen["name"]}
        if gen.get("namespace"):
            meta["namespace"] = gen["namespace"]
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    return out


def _matches(target: dict[str, Any], doc: dict[str, Any]) -> bool:
    rid = resource_id(doc)
    version = str(doc.get("apiVersion", "")).rpartition("/")[2]
    checks = {
        "kind": rid.kind,
        "name": rid.name,
        "namespace": rid.namespace,
        "group": rid.group,
        "version": version,
    }
    return all(re.fullmatch(str(target[k]), checks[k]) for k in target)


def _apply_patch_entry(
    folder: Path, kfile: Path, n: int, patch: Any, resources: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    where = f"{kfile}: patches[{n}]"
    if not isinstance(patch, dict) or set(patch) - {"path", "patch", "target"}:
        raise KustomizeError(f"{where}: use path or patch, and target")
    if ("path" in patch) == ("patch" in patch):
        raise KustomizeError(f"{where}: give exactly one of path and patch")
    target = patch.get("target")
    if not isinstance(target, dict) or not target or set(target) - _TARGET_FIELDS:
        raise KustomizeError(
            f"{where}: needs a target with some of {', '.join(sorted(_TARGET_FIELDS))} "
            f"(strategic merge patches and label selectors are not supported here)"
        )
    if "path" in patch:
        path = folder / str(patch["path"])
        if not path.is_file() or not _inside(folder, path):
            raise KustomizeError(f"{where}: patch file {patch['path']} is not in {folder}")
        text = path.read_text()
    else:
        text = str(patch["patch"])
    try:
        operations = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{where}: not YAML: {exc}") from None
    if not isinstance(operations, list):
        raise KustomizeError(
            f"{where}: expected a list of JSON 6902 operations (strategic merge patches are not supported)"
        )
    out, matched = [], 0
    for doc in resources:
        if _matches(target, doc):
            matched += 1
            try:
                doc = apply_patch(doc, operations)
            except PatchError as exc:
                raise KustomizeError(f"{where} on {resource_id(doc)}: {exc}") from None
        out.append(doc)
    if not matched:
        raise KustomizeError(f"{where}: target {target} matches no resource")
    return out


_IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]*))?(?:@(?P<digest>[\w:+.-]+))?$")


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    m = _IMAGE.match(image)
    if not m:
        return image, None, None
    return m.group("name"), m.group("tag"), m.group("digest")


def _set_images(doc: dict[str, Any], image: dict[str, Any], kfile: Path) -> dict[str, Any]:
    if (
        not isinstance(image, dict)
        or "name" not in image
        or set(image) - {"name", "newName", "newTag", "digest"}
    ):
        raise KustomizeError(f"{kfile}: images entry {image!r}: use name, newName, newTag, digest")
    doc = copy.deepcopy(doc)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for container in value:
                        if isinstance(container, dict) and isinstance(container.get("image"), str):
                            container["image"] = _new_image(container["image"], image)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return doc


def _new_image(current: str, image: dict[str, Any]) -> str:
    name, tag, digest = _split_image(current)
    if name != image["name"]:
        return current
    name = str(image.get("newName", name))
    if image.get("digest"):
        return f"{name}@{image['digest']}"
    if image.get("newTag") is not None:
        return f"{name}:{image['newTag']}"
    suffix = f":{tag}" if tag else ""
    return f"{name}{suffix}{'@' + digest if digest else ''}"
