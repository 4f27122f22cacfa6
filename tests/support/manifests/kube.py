"""Schema checks of rendered Kubernetes resources, offline.

Core kinds go to kubernetes-validate (strict: unknown fields are errors) for
:data:`K8S_VERSION`. RayCluster and RayJob go to the KubeRay field schemas in images/k8s/schemas,
whose pod templates refer to Kubernetes' own (strict) PodTemplateSpec, so a misspelt container
field inside a RayCluster fails as surely as one in a Job.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate.utils import schema_contents

from support.manifests import Problem
from support.manifests.kustomize import resource_id
from support.manifests.project import SCHEMA_DIR

#: The oldest Kubernetes these manifests target (kubernetes-validate bundles its schemas).
K8S_VERSION = "1.32"
KUBERAY_SCHEMAS = {"RayCluster": "raycluster.schema.json", "RayJob": "rayjob.schema.json"}


@cache
def _kuberay_validators() -> dict[str, jsonschema.protocols.Validator]:
    definitions = schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict/_definitions.json", K8S_VERSION
    )
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        definitions["$id"], referencing.Resource.from_contents(definitions)
    )
    schemas = {kind: json.loads((SCHEMA_DIR / f).read_text()) for kind, f in KUBERAY_SCHEMAS.items()}
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
        registry = registry.with_resource(schema["$id"], referencing.Resource.from_contents(schema))
    return {
        kind: jsonschema.Draft202012Validator(schema, registry=registry) for kind, schema in schemas.items()
    }


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "(top)"


def validate_resource(doc: dict[str, Any], source: str) -> list[Problem]:
    """Schema problems of one resource (empty when it passes)."""
    where = f"{source}: {resource_id(doc)}"
    kind = str(doc.get("kind"))
    if kind in KUBERAY_SCHEMAS:
        if doc.get("apiVersion") != "ray.io/v1":
            return [
                Problem(where, f"apiVersion {doc.get('apiVersion')!r}: KubeRay resources here are ray.io/v1")
            ]
        errors = sorted(_kuberay_validators()[kind].iter_errors(doc), key=lambda e: list(e.absolute_path))
        return [
            Problem(
                f"{where}: {_path(e.absolute_path)}",
                f"{e.message} (KubeRay v1.5.1 {kind} fields: images/k8s/schemas/{KUBERAY_SCHEMAS[kind]})",
            )
            for e in errors
        ]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [Problem(f"{where}: {_path(exc.path)}", f"{exc.message} (Kubernetes {K8S_VERSION}, strict)")]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [Problem(where, f"{exc.message}: no schema to check it against; add one or drop the resource")]
    return []


def validate_resources(docs: list[dict[str, Any]], source: str) -> list[Problem]:
    """Schema problems of every resource."""
    return [p for doc in docs for p in validate_resource(doc, source)]
