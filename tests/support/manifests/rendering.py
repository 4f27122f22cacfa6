"""A kustomize rendering read as Kubernetes and KubeRay define it: resource ids, the pod
templates inside resources (with the Ray role KubeRay gives each), lookups by name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]


@dataclass(frozen=True)
class ResourceId:
    """How kustomize and the API server tell resources apart."""

    group: str
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}{'.' + self.group if self.group else ''} {ns}{self.name}"


def resource_id(doc: dict[str, Any]) -> ResourceId:
    """The id of a resource."""
    group = str(doc.get("apiVersion", "")).rpartition("/")[0]
    meta = doc.get("metadata") or {}
    return ResourceId(
        group, str(doc.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))
    )


@dataclass(frozen=True)
class PodTemplate:
    """A pod template somewhere in a resource, with the Ray role KubeRay gives it (if any)."""

    owner: Doc
    label: str
    ray_role: str | None  # "head", "worker" for KubeRay-managed pods; None otherwise
    template: Doc

    @property
    def namespace(self) -> str:
        return str((self.owner.get("metadata") or {}).get("namespace", ""))

    @property
    def where(self) -> str:
        return f"{resource_id(self.owner)}: {self.label}"

    @property
    def spec(self) -> Doc:
        return self.template.get("spec") or {}

    def containers(self, *, init: bool = False) -> Iterator[tuple[str, Doc]]:
        """(where, container) of its containers, and of its initContainers with ``init``."""
        for key in ("containers", "initContainers") if init else ("containers",):
            for i, c in enumerate(self.spec.get(key) or []):
                yield f"{self.where}.{key}[{i}] ({c.get('name')})", c


def _ray_cluster_templates(owner: Doc, spec: Doc, prefix: str) -> Iterator[PodTemplate]:
    head = spec.get("headGroupSpec") or {}
    if "template" in head:
        yield PodTemplate(owner, f"{prefix}headGroupSpec", "head", head["template"])
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        if "template" in group:
            label = f"{prefix}workerGroupSpecs[{i}] ({group.get('groupName')})"
            yield PodTemplate(owner, label, "worker", group["template"])


def pod_templates(doc: Doc) -> Iterator[PodTemplate]:
    """Every pod template of a resource (Ray head/worker groups included)."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "RayCluster":
        yield from _ray_cluster_templates(doc, spec, "spec.")
    elif kind == "RayJob":
        yield from _ray_cluster_templates(doc, spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec.")
        if "submitterPodTemplate" in spec:
            yield PodTemplate(doc, "spec.submitterPodTemplate", None, spec["submitterPodTemplate"])
    elif kind == "Pod":
        yield PodTemplate(doc, "(pod)", None, doc)
    else:
        template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
        if isinstance(template, dict) and "containers" in (template.get("spec") or {}):
            yield PodTemplate(doc, "spec.template", None, template)


class Rendering:
    """The resources of one rendering, by kind, namespace and name."""

    def __init__(self, docs: list[Doc]):
        self.docs = docs
        self._by_id = {(str(d.get("kind")), resource_id(d).namespace, resource_id(d).name): d for d in docs}

    def get(self, kind: str, namespace: str, name: str) -> Doc | None:
        return self._by_id.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d.get("kind") == kind]
