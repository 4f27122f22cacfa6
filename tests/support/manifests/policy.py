"""What only this project knows about its Kubernetes manifests (after rendering).

- Roles: every container's environment (ConfigMaps it loads, its own ``env``, and the
  ``RAY_ADDRESS=<host>:6379`` KubeRay injects into Ray containers that do not set it) must
  resolve in swe_fleet.addresses for its role: head and workers ``auto``, clients ``http(s)://``
  or ``ray://``.
- Secrets: no Secret resource, no secret-named variable with a literal value, no secret in a
  ConfigMap, no Role reading all Secrets; every Secret a manifest needs is documented in README.
- References: ConfigMaps, PVCs, ServiceAccounts, Roles, namespaces and the head a Service selects
  exist; the client ``RAY_ADDRESS`` names a Service and port that exist; files a command reads
  from a mounted ConfigMap are keys of it, and council specs among them load.
- Versions: ``rayVersion`` is the project's Ray, images carry the project version, one image
  per rendering; token auth is on.
- RayJob: HTTPMode uploads nothing (no local working_dir), a TTL acts only with
  shutdownAfterJobFinishes.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from swe_fleet.errors import SpecError
from swe_fleet.spec import CouncilSpec

from support.manifests import Problem
from support.manifests.kustomize import resource_id
from support.manifests.project import (
    IMAGE_NAME,
    REPO_ROOT,
    holds_secret,
    project_version,
    ray_version,
    role_address_problem,
)

#: What KubeRay puts in RAY_ADDRESS when a Ray container's ``env`` does not set it.
KUBERAY_INJECTED_ADDRESS = "RAY-HEAD-IP:6379"
#: Token auth exists from this Ray version on (KubeRay's authOptions requires it).
MIN_RAY_FOR_TOKEN_AUTH = (2, 52)
_CLUSTER_NAMESPACED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


@dataclass(frozen=True)
class PodTemplate:
    """A pod template somewhere in a resource, with the Ray role KubeRay gives it (if any)."""

    owner: dict[str, Any]
    label: str
    ray_role: str | None  # "head", "worker" for KubeRay-managed pods; None otherwise
    template: dict[str, Any]

    @property
    def namespace(self) -> str:
        return str((self.owner.get("metadata") or {}).get("namespace", ""))

    @property
    def where(self) -> str:
        return f"{resource_id(self.owner)}: {self.label}"


def _ray_cluster_templates(owner: dict[str, Any], spec: dict[str, Any], prefix: str) -> Iterator[PodTemplate]:
    head = spec.get("headGroupSpec") or {}
    if "template" in head:
        yield PodTemplate(owner, f"{prefix}headGroupSpec", "head", head["template"])
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        if "template" in group:
            yield PodTemplate(
                owner,
                f"{prefix}workerGroupSpecs[{i}] ({group.get('groupName')})",
                "worker",
                group["template"],
            )


def pod_templates(doc: dict[str, Any]) -> Iterator[PodTemplate]:
    """Every pod template of a resource (Ray head/worker groups included)."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "RayCluster":
        yield from _ray_cluster_templates(doc, spec, "spec.")
    elif doc.get("kind") == "RayJob":
        yield from _ray_cluster_templates(doc, spec.get("rayClusterSpec") or {}, "spec.rayClusterSpec.")
        if "submitterPodTemplate" in spec:
            yield PodTemplate(doc, "spec.submitterPodTemplate", None, spec["submitterPodTemplate"])
    else:
        template = spec.get("template") or (spec.get("jobTemplate") or {}).get("spec", {}).get("template")
        if isinstance(template, dict) and "containers" in (template.get("spec") or {}):
            yield PodTemplate(doc, "spec.template", None, template)


def _containers(t: PodTemplate) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from enumerate((t.template.get("spec") or {}).get("containers") or [])


class _Index:
    """Rendered resources by kind, namespace and name."""

    def __init__(self, docs: list[dict[str, Any]]):
        self.docs = docs
        self.by_id = {(str(d.get("kind")), resource_id(d).namespace, resource_id(d).name): d for d in docs}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.by_id.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]


def _container_env(
    idx: _Index, t: PodTemplate, c: dict[str, Any], where: str
) -> tuple[dict[str, str], list[Problem]]:
    """The environment a container starts with (literal values), as far as manifests say."""
    env: dict[str, str] = {}
    problems: list[Problem] = []
    for source in c.get("envFrom") or []:
        ref = source.get("configMapRef")
        if not ref:
            continue
        cm = idx.get("ConfigMap", t.namespace, ref.get("name", ""))
        if cm is None:
            if not ref.get("optional"):
                problems.append(
                    Problem(
                        where,
                        f"envFrom ConfigMap {ref.get('name')!r} does not exist in namespace {t.namespace}",
                    )
                )
            continue
        prefix = source.get("prefix", "")
        env.update({prefix + k: str(v) for k, v in (cm.get("data") or {}).items()})
    names = set()
    for item in c.get("env") or []:
        names.add(item.get("name"))
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "valueFrom" in item and "configMapKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["configMapKeyRef"]
            cm = idx.get("ConfigMap", t.namespace, ref.get("name", ""))
            if cm is None or ref.get("key") not in (cm.get("data") or {}):
                problems.append(
                    Problem(
                        where,
                        f"env {item['name']}: ConfigMap key "
                        f"{ref.get('name')}/{ref.get('key')} does not exist",
                    )
                )
            else:
                env[item["name"]] = str(cm["data"][ref["key"]])
    if t.ray_role and "RAY_ADDRESS" not in names:
        # KubeRay checks the container's `env` list only (not envFrom) and then appends its own;
        # `env` wins over `envFrom`, so this is what the process sees.
        env["RAY_ADDRESS"] = KUBERAY_INJECTED_ADDRESS
    return env, problems


def check_roles(docs: list[dict[str, Any]]) -> list[Problem]:
    """Every container's environment resolves for its role in swe_fleet.addresses."""
    idx, problems = _Index(docs), []
    for doc in docs:
        for t in pod_templates(doc):
            for i, c in _containers(t):
                where = f"{t.where}.containers[{i}] ({c.get('name')})"
                env, found = _container_env(idx, t, c, where)
                problems += found
                declared = env.get("SWE_FLEET_ROLE")
                role = t.ray_role or declared or "client"
                if t.ray_role and declared != t.ray_role:
                    problems.append(
                        Problem(
                            where,
                            f"SWE_FLEET_ROLE is {declared!r} in a Ray {t.ray_role} pod: load the "
                            f"swe-fleet-{t.ray_role} ConfigMap (envFrom) so the role is {t.ray_role!r}",
                        )
                    )
                why = role_address_problem(role, env)
                if why:
                    hint = (
                        " (KubeRay injected it: set RAY_ADDRESS=auto in the container's env)"
                        if env.get("RAY_ADDRESS") == KUBERAY_INJECTED_ADDRESS
                        else ""
                    )
                    problems.append(Problem(where, f"as a {role}: {why}{hint}"))
    for cm in idx.of_kind("ConfigMap"):
        # A role ConfigMap must be right on its own, even where a container's env masks it.
        data = {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
        if data.get("SWE_FLEET_ROLE") and (why := role_address_problem(data["SWE_FLEET_ROLE"], data)):
            problems.append(Problem(f"{resource_id(cm)}: data", why))
    return problems


def _walk_containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            yield from _walk_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_containers(item)


def secret_references(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(namespace, name) of every Secret the manifests read (created out of band)."""
    refs = set()
    for doc in docs:
        for t in pod_templates(doc):
            for _, c in _containers(t):
                for item in c.get("env") or []:
                    ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        refs.add((t.namespace, ref["name"]))
                for source in c.get("envFrom") or []:
                    if "secretRef" in source:
                        refs.add((t.namespace, source["secretRef"]["name"]))
            for volume in (t.template.get("spec") or {}).get("volumes") or []:
                if "secret" in volume:
                    refs.add((t.namespace, volume["secret"]["secretName"]))
    return refs


def check_secrets(docs: list[dict[str, Any]], readme: str | None = None) -> list[Problem]:
    """No secret is kept in a manifest; every Secret a manifest reads is documented."""
    problems = []
    for doc in docs:
        rid = resource_id(doc)
        if doc.get("kind") == "Secret":
            problems.append(
                Problem(
                    str(rid),
                    "a Secret in the repository: create it out of band "
                    "(kubectl create secret generic ...) and reference it",
                )
            )
        if doc.get("kind") == "ConfigMap":
            for key in doc.get("data") or {}:
                if holds_secret(key):
                    problems.append(
                        Problem(f"{rid}: data.{key}", "a secret in a ConfigMap: use a Secret (secretKeyRef)")
                    )
        if doc.get("kind") in ("Role", "ClusterRole"):
            for n, rule in enumerate(doc.get("rules") or []):
                if "secrets" in (rule.get("resources") or []) and not rule.get("resourceNames"):
                    problems.append(
                        Problem(
                            f"{rid}: rules[{n}]",
                            "grants every Secret of the namespace: list the one it needs in resourceNames",
                        )
                    )
        for c in _walk_containers(doc):
            for item in c.get("env") or []:
                if holds_secret(str(item.get("name"))) and "value" in item:
                    problems.append(
                        Problem(
                            f"{rid}: container {c.get('name')}: env {item['name']}",
                            "a literal secret: use valueFrom.secretKeyRef",
                        )
                    )
    readme = (REPO_ROOT / "README.md").read_text() if readme is None else readme
    for namespace, name in sorted(secret_references(docs)):
        if name not in readme:
            problems.append(
                Problem(
                    f"Secret {namespace}/{name}",
                    "is read by a manifest but README.md does not say how to create it",
                )
            )
    return problems


def check_references(docs: list[dict[str, Any]]) -> list[Problem]:
    """Every name a resource refers to exists in the rendering."""
    idx, problems = _Index(docs), []
    namespaces = {resource_id(d).name for d in idx.of_kind("Namespace")}
    for doc in docs:
        rid = resource_id(doc)
        if doc.get("kind") not in _CLUSTER_NAMESPACED and rid.namespace not in namespaces:
            problems.append(
                Problem(str(rid), f"namespace {rid.namespace!r} is not created by these manifests")
            )
        for t in pod_templates(doc):
            spec = t.template.get("spec") or {}
            sa = spec.get("serviceAccountName")
            if sa and idx.get("ServiceAccount", t.namespace, sa) is None:
                problems.append(Problem(t.where, f"ServiceAccount {sa!r} does not exist in {t.namespace}"))
            for volume in spec.get("volumes") or []:
                if (
                    "configMap" in volume
                    and idx.get("ConfigMap", t.namespace, volume["configMap"]["name"]) is None
                ):
                    problems.append(
                        Problem(
                            t.where,
                            f"volume {volume['name']}: ConfigMap {volume['configMap']['name']!r} "
                            f"does not exist in {t.namespace}",
                        )
                    )
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and idx.get("PersistentVolumeClaim", t.namespace, claim) is None:
                    problems.append(
                        Problem(
                            t.where, f"volume {volume['name']}: PVC {claim!r} does not exist in {t.namespace}"
                        )
                    )
        if doc.get("kind") == "RoleBinding":
            ref = doc.get("roleRef") or {}
            if ref.get("kind") == "Role" and idx.get("Role", rid.namespace, ref.get("name", "")) is None:
                problems.append(
                    Problem(str(rid), f"roleRef Role {ref.get('name')!r} does not exist in {rid.namespace}")
                )
            for s in doc.get("subjects") or []:
                if (
                    s.get("kind") == "ServiceAccount"
                    and idx.get("ServiceAccount", s.get("namespace", rid.namespace), s.get("name", ""))
                    is None
                ):
                    problems.append(
                        Problem(
                            str(rid),
                            f"subject ServiceAccount {s.get('namespace')}/{s.get('name')} does not exist",
                        )
                    )
        if doc.get("kind") == "Service":
            cluster = ((doc.get("spec") or {}).get("selector") or {}).get("ray.io/cluster")
            if cluster and idx.get("RayCluster", rid.namespace, cluster) is None:
                problems.append(
                    Problem(
                        str(rid),
                        f"selects the head of RayCluster {cluster!r}, "
                        f"which does not exist in {rid.namespace}",
                    )
                )
    problems += _check_client_addresses(idx)
    return problems


def _check_client_addresses(idx: _Index) -> list[Problem]:
    """A client ConfigMap's RAY_ADDRESS names a Service (and port) of these manifests."""
    problems = []
    for cm in idx.of_kind("ConfigMap"):
        data = cm.get("data") or {}
        if data.get("SWE_FLEET_ROLE") != "client" or "RAY_ADDRESS" not in data:
            continue
        where = f"{resource_id(cm)}: data.RAY_ADDRESS"
        url = urlsplit(data["RAY_ADDRESS"])
        parts = (url.hostname or "").split(".")
        if len(parts) < 2 or parts[2:] not in ([], ["svc"], ["svc", "cluster", "local"]):
            problems.append(
                Problem(where, f"{url.hostname!r} is not a Service name (NAME.NAMESPACE.svc.cluster.local)")
            )
            continue
        svc = idx.get("Service", parts[1], parts[0])
        if svc is None:
            problems.append(
                Problem(where, f"Service {parts[1]}/{parts[0]} does not exist in these manifests")
            )
            continue
        ports = {p.get("port") for p in (svc.get("spec") or {}).get("ports") or []}
        if url.port not in ports:
            problems.append(
                Problem(
                    where, f"port {url.port} is not a port of Service {parts[1]}/{parts[0]} ({sorted(ports)})"
                )
            )
    return problems


def _ray_versions(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if doc.get("kind") == "RayCluster":
        yield "spec", doc.get("spec") or {}
    elif doc.get("kind") == "RayJob":
        yield "spec.rayClusterSpec", (doc.get("spec") or {}).get("rayClusterSpec") or {}


def check_versions(docs: list[dict[str, Any]]) -> list[Problem]:
    """rayVersion, token auth and image tags agree with the project."""
    problems, images = [], set()
    ray, version = ray_version(), project_version()
    for doc in docs:
        rid = resource_id(doc)
        for path, spec in _ray_versions(doc):
            if spec.get("rayVersion") != ray:
                problems.append(
                    Problem(
                        f"{rid}: {path}.rayVersion",
                        f"{spec.get('rayVersion')!r} but the image and pyproject run Ray {ray}",
                    )
                )
            if (spec.get("authOptions") or {}).get("mode") != "token":
                problems.append(
                    Problem(
                        f"{rid}: {path}.authOptions.mode",
                        "must be token (Ray's token auth, as the local stack; clients send the token)",
                    )
                )
            if tuple(int(x) for x in re.findall(r"\d+", ray)[:2]) < MIN_RAY_FOR_TOKEN_AUTH:
                problems.append(Problem(f"{rid}: {path}", f"token auth needs Ray >= 2.52, not {ray}"))
        for c in _walk_containers(doc):
            image = str(c.get("image", ""))
            if not image:
                problems.append(Problem(f"{rid}: container {c.get('name')}", "has no image"))
                continue
            name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
            if name.rsplit("/", 1)[-1] == IMAGE_NAME:
                images.add(image)
                if not tag.startswith(version):
                    problems.append(
                        Problem(
                            f"{rid}: container {c.get('name')}",
                            f"image {image}: the tag must start with the project version {version}",
                        )
                    )
    if len(images) > 1:
        problems.append(Problem("images", f"one rendering runs one swe-fleet image, found {sorted(images)}"))
    return problems


def _mounted_config_maps(t: PodTemplate, c: dict[str, Any]) -> dict[str, str]:
    """mountPath -> ConfigMap name, for the container's ConfigMap volumes."""
    volumes = {
        v["name"]: v["configMap"]["name"]
        for v in (t.template.get("spec") or {}).get("volumes") or []
        if "configMap" in v
    }
    return {
        m["mountPath"].rstrip("/"): volumes[m["name"]]
        for m in c.get("volumeMounts") or []
        if m.get("name") in volumes
    }


def _file_arguments(words: list[str], mounts: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    for word in words:
        path = PurePosixPath(word)
        if str(path.parent) in mounts:
            yield word, mounts[str(path.parent)], path.name


def check_mounted_files(docs: list[dict[str, Any]]) -> list[Problem]:
    """Files a command reads from a mounted ConfigMap exist; council specs among them load.

    The RayJob's entrypoint runs on its head pod (the driver), so it is checked against the
    head's mounts.
    """
    idx, problems = _Index(docs), []
    for doc in docs:
        for t in pod_templates(doc):
            for i, c in _containers(t):
                words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
                if doc.get("kind") == "RayJob" and t.ray_role == "head":
                    words += shlex.split(str((doc.get("spec") or {}).get("entrypoint", "")))
                mounts = _mounted_config_maps(t, c)
                for word, cm_name, key in _file_arguments(words, mounts):
                    where = f"{t.where}.containers[{i}] ({c.get('name')}): {word}"
                    cm = idx.get("ConfigMap", t.namespace, cm_name)
                    data = (cm or {}).get("data") or {}
                    if key not in data:
                        problems.append(
                            Problem(where, f"ConfigMap {cm_name!r} mounted there has no key {key!r}")
                        )
                    elif key.endswith((".yaml", ".yml", ".json")) and "council" in key:
                        try:
                            CouncilSpec.from_text(
                                data[key], source=f"ConfigMap {t.namespace}/{cm_name}:{key}"
                            )
                        except SpecError as exc:
                            problems.append(Problem(where, f"not a valid council spec: {exc}"))
    return problems


def check_rayjobs(docs: list[dict[str, Any]]) -> list[Problem]:
    """RayJob settings that KubeRay accepts but that cannot do what they say."""
    problems = []
    for doc in docs:
        if doc.get("kind") != "RayJob":
            continue
        rid, spec = resource_id(doc), doc.get("spec") or {}
        if "ttlSecondsAfterFinished" in spec and not spec.get("shutdownAfterJobFinishes"):
            problems.append(
                Problem(
                    f"{rid}: spec.ttlSecondsAfterFinished",
                    "acts only with shutdownAfterJobFinishes: true (the cluster would never be deleted)",
                )
            )
        try:
            runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        except yaml.YAMLError as exc:
            problems.append(Problem(f"{rid}: spec.runtimeEnvYAML", f"not YAML: {exc}"))
            continue
        if not isinstance(runtime_env, dict):
            problems.append(Problem(f"{rid}: spec.runtimeEnvYAML", "must be a mapping (a Ray runtime_env)"))
            continue
        if spec.get("submissionMode") == "HTTPMode":
            for key in ("working_dir", "py_modules"):
                values = runtime_env.get(key)
                for value in values if isinstance(values, list) else [values] if values else []:
                    if "://" not in str(value):
                        problems.append(
                            Problem(
                                f"{rid}: spec.runtimeEnvYAML.{key}",
                                f"{value!r} is a local path, and "
                                "HTTPMode uploads nothing: bake it into the image or use a URI",
                            )
                        )
    return problems


def check_all(docs: list[dict[str, Any]], readme: str | None = None) -> list[Problem]:
    """Every project rule on one rendering."""
    return (
        check_roles(docs)
        + check_secrets(docs, readme)
        + check_references(docs)
        + check_versions(docs)
        + check_mounted_files(docs)
        + check_rayjobs(docs)
    )
