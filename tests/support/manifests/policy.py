"""What only this project knows about its Kubernetes manifests, checked on kustomize's rendering.

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
- Overlays: every patch changes the rendering (kustomize silently skips a patch whose target
  matches nothing, so a misspelt name would leave the base as it is).
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import yaml

from swe_fleet.errors import SpecError
from swe_fleet.spec import CouncilSpec

from support.manifests import Problem
from support.manifests.project import (
    IMAGE_NAME,
    REPO_ROOT,
    holds_secret,
    project_version,
    ray_version,
    role_address_problem,
)
from support.manifests.rendering import Doc, PodTemplate, Rendering, pod_templates, resource_id
from support.manifests.tools import kustomize

#: What KubeRay puts in RAY_ADDRESS when a Ray container's ``env`` does not set it.
KUBERAY_INJECTED_ADDRESS = "RAY-HEAD-IP:6379"
#: Token auth exists from this Ray version on (KubeRay's authOptions requires it).
MIN_RAY_FOR_TOKEN_AUTH = (2, 52)
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}


# ---- roles ------------------------------------------------------------------------------------


def _container_env(
    idx: Rendering, t: PodTemplate, c: Doc, where: str
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
        env.update({source.get("prefix", "") + k: str(v) for k, v in (cm.get("data") or {}).items()})
    for item in c.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif ref := (item.get("valueFrom") or {}).get("configMapKeyRef"):
            data = (idx.get("ConfigMap", t.namespace, ref.get("name", "")) or {}).get("data") or {}
            if ref.get("key") not in data:
                problems.append(
                    Problem(
                        where,
                        f"env {item['name']}: ConfigMap key "
                        f"{ref.get('name')}/{ref.get('key')} does not exist",
                    )
                )
            else:
                env[item["name"]] = str(data[ref["key"]])
    if t.ray_role and "RAY_ADDRESS" not in {item.get("name") for item in c.get("env") or []}:
        # KubeRay checks the container's `env` list only (not envFrom) and then appends its own;
        # `env` wins over `envFrom`, so this is what the process sees.
        env["RAY_ADDRESS"] = KUBERAY_INJECTED_ADDRESS
    return env, problems


def check_roles(docs: list[Doc]) -> list[Problem]:
    """Every container's environment resolves for its role in swe_fleet.addresses."""
    idx, problems = Rendering(docs), []
    for t in (t for doc in docs for t in pod_templates(doc)):
        for where, c in t.containers():
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
            if why := role_address_problem(role, env):
                injected = env.get("RAY_ADDRESS") == KUBERAY_INJECTED_ADDRESS
                hint = (
                    " (KubeRay injected it: set RAY_ADDRESS=auto in the container's env)" if injected else ""
                )
                problems.append(Problem(where, f"as a {role}: {why}{hint}"))
    for cm in idx.of_kind("ConfigMap"):
        # A role ConfigMap must be right on its own, even where a container's env masks it.
        data = {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
        if data.get("SWE_FLEET_ROLE") and (why := role_address_problem(data["SWE_FLEET_ROLE"], data)):
            problems.append(Problem(f"{resource_id(cm)}: data", why))
    return problems


# ---- secrets ----------------------------------------------------------------------------------


def secret_references(docs: list[Doc]) -> set[tuple[str, str]]:
    """(namespace, name) of every Secret the manifests read (created out of band)."""
    refs = set()
    for t in (t for doc in docs for t in pod_templates(doc)):
        for _, c in t.containers(init=True):
            refs |= {
                (t.namespace, ref["name"])
                for item in c.get("env") or []
                if (ref := (item.get("valueFrom") or {}).get("secretKeyRef"))
            }
            refs |= {
                (t.namespace, s["secretRef"]["name"]) for s in c.get("envFrom") or [] if "secretRef" in s
            }
        refs |= {
            (t.namespace, v["secret"]["secretName"]) for v in t.spec.get("volumes") or [] if "secret" in v
        }
    return refs


def check_secrets(docs: list[Doc], readme: str | None = None) -> list[Problem]:
    """No secret is kept in a manifest; every Secret a manifest reads is documented."""
    problems = []
    for doc in docs:
        rid, kind = resource_id(doc), doc.get("kind")
        if kind == "Secret":
            problems.append(
                Problem(
                    str(rid),
                    "a Secret in the repository: create it out of band (kubectl create secret generic ...) "
                    "and reference it",
                )
            )
        if kind == "ConfigMap":
            problems += [
                Problem(f"{rid}: data.{key}", "a secret in a ConfigMap: use a Secret (secretKeyRef)")
                for key in doc.get("data") or {}
                if holds_secret(key)
            ]
        if kind in ("Role", "ClusterRole"):
            problems += [
                Problem(
                    f"{rid}: rules[{n}]",
                    "grants every Secret of the namespace: list the one it needs in resourceNames",
                )
                for n, rule in enumerate(doc.get("rules") or [])
                if "secrets" in (rule.get("resources") or []) and not rule.get("resourceNames")
            ]
        problems += [
            Problem(f"{where}: env {item['name']}", "a literal secret: use valueFrom.secretKeyRef")
            for t in pod_templates(doc)
            for where, c in t.containers(init=True)
            for item in c.get("env") or []
            if holds_secret(str(item.get("name"))) and "value" in item
        ]
    if readme is None:  # the README and the docs it links to
        readme = "\n".join(
            p.read_text() for p in [REPO_ROOT / "README.md", *sorted(REPO_ROOT.glob("docs/*.md"))]
        )
    problems += [
        Problem(
            f"Secret {namespace}/{name}",
            "is read by a manifest but neither README.md nor docs/ say how to create it",
        )
        for namespace, name in sorted(secret_references(docs))
        if name not in readme
    ]
    return problems


# ---- references -------------------------------------------------------------------------------


def _template_references(idx: Rendering, t: PodTemplate) -> list[Problem]:
    problems = []
    sa = t.spec.get("serviceAccountName")
    if sa and idx.get("ServiceAccount", t.namespace, sa) is None:
        problems.append(Problem(t.where, f"ServiceAccount {sa!r} does not exist in {t.namespace}"))
    for volume in t.spec.get("volumes") or []:
        cm = (volume.get("configMap") or {}).get("name")
        if cm and idx.get("ConfigMap", t.namespace, cm) is None:
            problems.append(
                Problem(t.where, f"volume {volume['name']}: ConfigMap {cm!r} does not exist in {t.namespace}")
            )
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and idx.get("PersistentVolumeClaim", t.namespace, claim) is None:
            problems.append(
                Problem(t.where, f"volume {volume['name']}: PVC {claim!r} does not exist in {t.namespace}")
            )
    return problems


def _role_binding_references(idx: Rendering, binding: Doc) -> list[Problem]:
    rid, problems = resource_id(binding), []
    ref = binding.get("roleRef") or {}
    if ref.get("kind") == "Role" and idx.get("Role", rid.namespace, ref.get("name", "")) is None:
        problems.append(
            Problem(str(rid), f"roleRef Role {ref.get('name')!r} does not exist in {rid.namespace}")
        )
    for s in binding.get("subjects") or []:
        namespace = s.get("namespace", rid.namespace)
        if (
            s.get("kind") == "ServiceAccount"
            and idx.get("ServiceAccount", namespace, s.get("name", "")) is None
        ):
            problems.append(
                Problem(str(rid), f"subject ServiceAccount {namespace}/{s.get('name')} does not exist")
            )
    return problems


def _client_address_references(idx: Rendering) -> list[Problem]:
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
        name, namespace = parts[0], parts[1]
        svc = idx.get("Service", namespace, name)
        if svc is None:
            problems.append(Problem(where, f"Service {namespace}/{name} does not exist in these manifests"))
            continue
        ports = sorted(p.get("port") for p in (svc.get("spec") or {}).get("ports") or [])
        if url.port not in ports:
            problems.append(
                Problem(where, f"port {url.port} is not a port of Service {namespace}/{name} ({ports})")
            )
    return problems


def check_references(docs: list[Doc]) -> list[Problem]:
    """Every name a resource refers to exists in the rendering."""
    idx, problems = Rendering(docs), []
    namespaces = {resource_id(d).name for d in idx.of_kind("Namespace")}
    for doc in docs:
        rid = resource_id(doc)
        if doc.get("kind") not in _CLUSTER_SCOPED and rid.namespace not in namespaces:
            problems.append(
                Problem(str(rid), f"namespace {rid.namespace!r} is not created by these manifests")
            )
        for t in pod_templates(doc):
            problems += _template_references(idx, t)
        if doc.get("kind") == "RoleBinding":
            problems += _role_binding_references(idx, doc)
        cluster = ((doc.get("spec") or {}).get("selector") or {}).get("ray.io/cluster")
        if doc.get("kind") == "Service" and cluster and idx.get("RayCluster", rid.namespace, cluster) is None:
            problems.append(
                Problem(
                    str(rid),
                    f"selects the head of RayCluster {cluster!r}, which does not exist in {rid.namespace}",
                )
            )
    return problems + _client_address_references(idx)


# ---- versions ---------------------------------------------------------------------------------


def _ray_cluster_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    if doc.get("kind") == "RayCluster":
        yield "spec", doc.get("spec") or {}
    elif doc.get("kind") == "RayJob":
        yield "spec.rayClusterSpec", (doc.get("spec") or {}).get("rayClusterSpec") or {}


def check_versions(docs: list[Doc]) -> list[Problem]:
    """rayVersion, token auth and image tags agree with the project."""
    problems, images = [], set()
    ray, version = ray_version(), project_version()
    for doc in docs:
        rid = resource_id(doc)
        for path, spec in _ray_cluster_specs(doc):
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
        for where, c in (wc for t in pod_templates(doc) for wc in t.containers(init=True)):
            image = str(c.get("image", ""))
            name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
            if not image:
                problems.append(Problem(where, "has no image"))
            elif name.rsplit("/", 1)[-1] == IMAGE_NAME:
                images.add(image)
                if not tag.startswith(version):
                    problems.append(
                        Problem(
                            where, f"image {image}: the tag must start with the project version {version}"
                        )
                    )
    if len(images) > 1:
        problems.append(Problem("images", f"one rendering runs one swe-fleet image, found {sorted(images)}"))
    return problems


# ---- files mounted from ConfigMaps, RayJob settings -------------------------------------------


def _mounted_config_maps(t: PodTemplate, c: Doc) -> dict[str, str]:
    """mountPath -> ConfigMap name, for the container's ConfigMap volumes."""
    volumes = {v["name"]: v["configMap"]["name"] for v in t.spec.get("volumes") or [] if "configMap" in v}
    return {
        m["mountPath"].rstrip("/"): volumes[m["name"]]
        for m in c.get("volumeMounts") or []
        if m.get("name") in volumes
    }


def check_mounted_files(docs: list[Doc]) -> list[Problem]:
    """Files a command reads from a mounted ConfigMap exist; council specs among them load.

    The RayJob's entrypoint runs on its head pod (the driver), so it is checked against the
    head's mounts.
    """
    idx, problems = Rendering(docs), []
    for doc in docs:
        for t in pod_templates(doc):
            for where, c in t.containers():
                words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
                if doc.get("kind") == "RayJob" and t.ray_role == "head":
                    words += shlex.split(str((doc.get("spec") or {}).get("entrypoint", "")))
                mounts = _mounted_config_maps(t, c)
                for word in words:
                    path = PurePosixPath(word)
                    if str(path.parent) not in mounts:
                        continue
                    cm_name, key = mounts[str(path.parent)], path.name
                    data = (idx.get("ConfigMap", t.namespace, cm_name) or {}).get("data") or {}
                    if key not in data:
                        problems.append(
                            Problem(
                                f"{where}: {word}", f"ConfigMap {cm_name!r} mounted there has no key {key!r}"
                            )
                        )
                    elif key.endswith((".yaml", ".yml", ".json")) and "council" in key:
                        try:
                            CouncilSpec.from_text(
                                data[key], source=f"ConfigMap {t.namespace}/{cm_name}:{key}"
                            )
                        except SpecError as exc:
                            problems.append(Problem(f"{where}: {word}", f"not a valid council spec: {exc}"))
    return problems


def check_rayjobs(docs: list[Doc]) -> list[Problem]:
    """RayJob settings that KubeRay accepts but that cannot do what they say."""
    problems = []
    for doc in (d for d in docs if d.get("kind") == "RayJob"):
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
        if spec.get("submissionMode") != "HTTPMode":
            continue
        for key in ("working_dir", "py_modules"):
            values = runtime_env.get(key) or []
            problems += [
                Problem(
                    f"{rid}: spec.runtimeEnvYAML.{key}",
                    f"{value!r} is a local path, and HTTPMode uploads nothing: "
                    "bake it into the image or use a URI",
                )
                for value in (values if isinstance(values, list) else [values])
                if "://" not in str(value)
            ]
    return problems


def check_all(docs: list[Doc], readme: str | None = None) -> list[Problem]:
    """Every project rule on one rendering."""
    return (
        check_roles(docs)
        + check_secrets(docs, readme)
        + check_references(docs)
        + check_versions(docs)
        + check_mounted_files(docs)
        + check_rayjobs(docs)
    )


# ---- overlays ---------------------------------------------------------------------------------


def patches_without_effect(root: Path, folder: str) -> list[Problem]:
    """Patches of the kustomization ``root/folder`` that change nothing in its rendering.

    Each patch is left out in turn, in a copy of ``root`` (the tree the kustomization refers
    into), and kustomize renders the copy: the same output means the patch did nothing.
    """
    kfile = root / folder / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    patches = spec.get("patches") or []
    if not patches:
        return []
    rendered, problems = kustomize(root / folder), []
    with tempfile.TemporaryDirectory(prefix="swf-kustomize-") as tmp:
        # The whole images/ folder: the base includes ../../nats beside images/k8s.
        copy = Path(tmp) / root.parent.name / root.name
        shutil.copytree(root.parent, copy.parent, ignore=shutil.ignore_patterns("crds"))
        for n, patch in enumerate(patches):
            without = {**spec, "patches": patches[:n] + patches[n + 1 :]}
            (copy / folder / "kustomization.yaml").write_text(yaml.safe_dump(without))
            if kustomize(copy / folder) == rendered:
                problems.append(
                    Problem(
                        f"{kfile.relative_to(root.parent)}: patches[{n}]",
                        f"changes nothing: its target {patch.get('target')} matches no resource, "
                        "or its operations leave the resource as it was",
                    )
                )
    return problems
