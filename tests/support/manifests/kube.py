"""Schema checks of rendered Kubernetes resources, offline, as strict as ``kubectl apply``
(whose default, strict field validation, makes an unknown field an error).

- Core kinds: kubernetes-validate's strict schemas for :data:`K8S_VERSION`.
- RayCluster and RayJob: the ``openAPIV3Schema`` of KubeRay's own CRDs (images/k8s/crds,
  upstream and unmodified), pod templates included. Read as JSON Schema with what the API server
  adds: an object schema that lists properties takes no other field, ``nullable`` admits null.
  Rules written in CEL (``x-kubernetes-validations``) are not evaluated here, so a field that
  carries them is refused with the rules' messages rather than passed unchecked.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from support.manifests import Problem
from support.manifests.project import CRD_DIR
from support.manifests.rendering import resource_id

#: The oldest Kubernetes these manifests target (kubernetes-validate bundles its schemas).
K8S_VERSION = "1.32"
KUBERAY_VERSION = "v1.5.1"
#: The KubeRay API the manifests use (the CRDs' storage version).
KUBERAY_API_VERSION = "ray.io/v1"


def _as_api_server_does(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's structural schema as JSON Schema, with the API server's strictness."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: _as_api_server_does(v) for k, v in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _as_api_server_does(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_as_api_server_does(s) for s in out[key]]
    if out.pop("nullable", False):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def _cel_rules(
    _validator: Any, rules: list[dict[str, str]], _instance: Any, _schema: Any
) -> Iterator[jsonschema.ValidationError]:
    messages = "; ".join(r.get("message", r["rule"]) for r in rules)
    yield jsonschema.ValidationError(
        f"KubeRay checks this field with CEL rules that the offline check does not evaluate "
        f"({messages}): evaluate them in tests/support/manifests/kube.py before using it"
    )


_CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"x-kubernetes-validations": _cel_rules}
)


@cache
def _crd_validators() -> dict[str, tuple[str, jsonschema.protocols.Validator]]:
    """kind -> (CRD file, validator of its KUBERAY_API_VERSION), for every CRD in CRD_DIR."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)  # 1-2 MB each: C parser
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if f"{spec['group']}/{v['name']}" == KUBERAY_API_VERSION)
        schema = _as_api_server_does(version["schema"]["openAPIV3Schema"])
        validators[spec["names"]["kind"]] = (path.name, _CRDValidator(schema))
    return validators


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "(top)"


def validate_resource(doc: dict[str, Any], source: str) -> list[Problem]:
    """Schema problems of one resource (empty when it passes)."""
    where = f"{source}: {resource_id(doc)}"
    kind = str(doc.get("kind"))
    if kind in _crd_validators():
        if doc.get("apiVersion") != KUBERAY_API_VERSION:
            return [
                Problem(where, f"apiVersion {doc.get('apiVersion')!r}: use {KUBERAY_API_VERSION} (KubeRay's)")
            ]
        crd_file, validator = _crd_validators()[kind]
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        return [
            Problem(
                f"{where}: {_path(e.absolute_path)}",
                f"{e.message} (KubeRay {KUBERAY_VERSION} CRD, images/k8s/crds/{crd_file})",
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
