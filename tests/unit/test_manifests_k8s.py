"""images/k8s: every overlay renders with `kubectl kustomize` and passes Kubernetes' schemas (core
kinds), the schemas of KubeRay's CRDs (RayCluster, RayJob) and the project's rules; copies carrying
a real mistake fail with a message naming it."""

from __future__ import annotations

import copy
import shlex
import shutil
from typing import Any

import pytest
import yaml

from support.manifests import Problem, describe, tools
from support.manifests.dockerfile import repository_file_for
from support.manifests.kube import validate_resource, validate_resources
from support.manifests.policy import (
    check_all,
    check_references,
    check_roles,
    check_secrets,
    patches_without_effect,
)
from support.manifests.project import DOCKERFILE, K8S_DIR, REPO_ROOT
from support.manifests.rendering import resource_id
from support.manifests.tools import ToolMissing, kustomize

OVERLAYS = ("cpu-local", "gpu-prod")
#: What a user applies: an overlay, and on GPU clusters the RayJob example on top of it.
DEPLOYMENTS = {
    "cpu-local": ("overlays/cpu-local",),
    "gpu-prod": ("overlays/gpu-prod",),
    "gpu-prod+rayjob": ("overlays/gpu-prod", "rayjob"),
}
Docs = list[dict[str, Any]]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Docs]:
    """Each kustomization folder rendered once, by `kubectl kustomize`."""
    folders = {f for parts in DEPLOYMENTS.values() for f in parts}
    return {f: kustomize(K8S_DIR / f) for f in sorted(folders)}


def _deployment(rendered: dict[str, Docs], name: str) -> Docs:
    return copy.deepcopy([d for f in DEPLOYMENTS[name] for d in rendered[f]])


def _find(docs: Docs, kind: str, name: str, namespace: str = "swe-fleet") -> dict[str, Any]:
    for doc in docs:
        rid = resource_id(doc)
        if (rid.kind, rid.name, rid.namespace) == (kind, name, namespace):
            return doc
    raise LookupError(f"no {kind} {namespace}/{name}")


def _gpu_prod(rendered: dict[str, Docs]) -> Docs:
    return _deployment(rendered, "gpu-prod+rayjob")


def _rayjob(docs: Docs) -> dict[str, Any]:
    return _find(docs, "RayJob", "swe-fleet-council")


def _worker(docs: Docs) -> dict[str, Any]:
    group = _find(docs, "RayCluster", "swe-fleet")["spec"]["workerGroupSpecs"][0]
    return group["template"]["spec"]["containers"][0]


def _doctor(docs: Docs) -> dict[str, Any]:
    return _find(docs, "Job", "swe-fleet-doctor", "swe-fleet-clients")["spec"]["template"]["spec"][
        "containers"
    ][0]


def _all_problems(docs: Docs) -> list[Problem]:
    return validate_resources(docs, "test") + check_all(docs)


def _assert_fails(problems: list[Problem], *needles: str) -> None:
    text = describe(problems)
    assert problems, "the mistake was not caught"
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


# ---- the real files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_passes_kubernetes_and_kuberay_schemas(rendered, name):
    """Core kinds pass kubernetes-validate (strict); RayCluster/RayJob pass KubeRay's CRD schemas."""
    docs = _deployment(rendered, name)
    problems = validate_resources(docs, name)
    assert not problems, describe(problems)


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_follows_the_project_rules(rendered, name):
    """Roles, secrets, references, versions, mounted files and RayJob settings are all right."""
    problems = check_all(_deployment(rendered, name))
    assert not problems, describe(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_patch_of_an_overlay_takes_effect(overlay):
    """Leaving out any one patch changes the rendering: no patch silently matches nothing."""
    problems = patches_without_effect(K8S_DIR, f"overlays/{overlay}")
    assert not problems, describe(problems)


def test_rayjob_submits_over_http_and_cleans_up_after_bounded_retries(rendered):
    """The RayJob example uses HTTPMode, deletes its cluster after a TTL, retries and has a deadline."""
    spec = _rayjob(_gpu_prod(rendered))["spec"]
    assert spec["submissionMode"] == "HTTPMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0


def test_rayjob_entrypoint_runs_a_script_the_image_contains(rendered):
    """The entrypoint's script is copied into the image by the Dockerfile (HTTPMode uploads nothing)."""
    words = shlex.split(_rayjob(_gpu_prod(rendered))["spec"]["entrypoint"])
    script = next(w for w in words if w.endswith(".py"))
    source = repository_file_for(script, DOCKERFILE.read_text(), REPO_ROOT)
    assert source is not None and source.is_file(), f"{script} is not COPY'd into the image"


def test_rayjob_retries_publish_under_one_submission_id(rendered):
    """A fixed --submission-id makes KubeRay's retries reuse event keys and the checkpoint."""
    words = shlex.split(_rayjob(_gpu_prod(rendered))["spec"]["entrypoint"])
    assert "--submission-id" in words and words[words.index("--submission-id") + 1]


def test_gpu_prod_workers_reserve_gpus_and_cpu_local_workers_do_not(rendered):
    """The GPU worker group asks for nvidia.com/gpu; the laptop overlay turns it into CPUs."""
    assert _worker(_deployment(rendered, "gpu-prod"))["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in _worker(_deployment(rendered, "cpu-local"))["resources"]["limits"]


def test_clients_live_in_another_namespace_than_the_cluster(rendered):
    """The submitter's account is in swe-fleet-clients and bound to a Role in swe-fleet."""
    docs = _deployment(rendered, "gpu-prod")
    binding = _find(docs, "RoleBinding", "swe-fleet-submitter")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "swe-fleet-submitter", "namespace": "swe-fleet-clients"}
    ]
    rules = _find(docs, "Role", "swe-fleet-submitter")["rules"]
    assert any("rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)


# ---- mistakes that must fail ------------------------------------------------------------------


def test_misspelt_kuberay_field_fails(rendered):
    """shutdownAfterJobFinish (no s) is not a RayJob field: the schema names it."""
    docs = _gpu_prod(rendered)
    spec = _rayjob(docs)["spec"]
    spec["shutdownAfterJobFinish"] = spec.pop("shutdownAfterJobFinishes")
    _assert_fails(validate_resource(_rayjob(docs), "t"), "'shutdownAfterJobFinish' was unexpected", "spec")


def test_misspelt_worker_group_field_fails(rendered):
    """minReplica is not a WorkerGroupSpec field."""
    docs = _gpu_prod(rendered)
    group = _find(docs, "RayCluster", "swe-fleet")["spec"]["workerGroupSpecs"][0]
    group["minReplica"] = group.pop("minReplicas")
    _assert_fails(
        validate_resource(_find(docs, "RayCluster", "swe-fleet"), "t"),
        "'minReplica' was unexpected",
        "spec.workerGroupSpecs.0",
    )


def test_misspelt_container_field_inside_a_ray_pod_template_fails(rendered):
    """Pod templates inside KubeRay resources are checked against Kubernetes' own schema."""
    docs = _gpu_prod(rendered)
    _worker(docs)["volumeMount"] = _worker(docs).pop("volumeMounts")
    _assert_fails(
        validate_resource(_find(docs, "RayCluster", "swe-fleet"), "t"), "'volumeMount' was unexpected"
    )


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s.update(ttlSecondsAfterFinished="600"), "'600' is not of type 'integer'"),
        (lambda s: s.update(backoffLimit=1.5), "1.5 is not of type 'integer'"),
        (
            lambda s: s["rayClusterSpec"]["authOptions"].update(mode="tokens"),
            "'tokens' is not one of ['disabled', 'token']",
        ),
        (lambda s: s.update(shutdownAfterJobFinishes="true"), "'true' is not of type 'boolean'"),
        (
            lambda s: s["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "0 is not of type 'string'",
        ),
    ],
)
def test_wrong_type_or_value_in_a_rayjob_fails(rendered, mutate, needle):
    """Types and enums of KubeRay's CRD are enforced (rayStartParams are strings)."""
    docs = _gpu_prod(rendered)
    mutate(_rayjob(docs)["spec"])
    _assert_fails(validate_resource(_rayjob(docs), "t"), needle)


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        (("spec", "headGroupSpec"), "'headGroupSpec' is a required property"),
        (("spec", "workerGroupSpecs", 0, "groupName"), "'groupName' is a required property"),
        (("spec", "headGroupSpec", "template"), "'template' is a required property"),
    ],
)
def test_missing_required_kuberay_field_fails(rendered, path, needle):
    """Fields KubeRay's CRD requires cannot be left out."""
    docs = _gpu_prod(rendered)
    node: Any = _find(docs, "RayCluster", "swe-fleet")
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    _assert_fails(validate_resource(_find(docs, "RayCluster", "swe-fleet"), "t"), needle)


def test_field_that_kuberay_checks_with_cel_rules_is_refused(rendered):
    """deletionStrategy carries CEL rules the offline check cannot evaluate: refused, not passed."""
    docs = _gpu_prod(rendered)
    _rayjob(docs)["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}
    _assert_fails(
        validate_resource(_rayjob(docs), "t"),
        "spec.deletionStrategy",
        "CEL rules",
        "BOTH onSuccess and onFailure",
    )


def test_kuberay_resource_of_another_api_version_fails(rendered):
    """RayCluster and RayJob are checked as ray.io/v1, KubeRay's storage version."""
    docs = _gpu_prod(rendered)
    _rayjob(docs)["apiVersion"] = "ray.io/v1alpha1"
    _assert_fails(validate_resource(_rayjob(docs), "t"), "apiVersion 'ray.io/v1alpha1': use ray.io/v1")


def test_misspelt_field_in_a_core_kind_fails(rendered):
    """kubernetes-validate (strict) rejects an unknown Service field."""
    docs = _gpu_prod(rendered)
    service = _find(docs, "Service", "swe-fleet-dashboard")
    service["spec"]["selectors"] = service["spec"].pop("selector")
    _assert_fails(
        validate_resource(service, "t"), "'selectors' was unexpected", "Service swe-fleet/swe-fleet-dashboard"
    )


def test_worker_with_ray_address_set_fails(rendered):
    """A worker whose RAY_ADDRESS is the head's GCS address is refused by swe_fleet.addresses."""
    docs = _gpu_prod(rendered)
    _worker(docs)["env"] = [{"name": "RAY_ADDRESS", "value": "swe-fleet-head-svc:6379"}]
    _assert_fails(
        check_roles(docs), "as a worker", "RAY_ADDRESS='swe-fleet-head-svc:6379'", "unset or 'auto'"
    )


def test_worker_without_ray_address_fails_because_kuberay_injects_one(rendered):
    """Leaving RAY_ADDRESS out of a Ray container's env lets KubeRay set host:6379: caught."""
    docs = _gpu_prod(rendered)
    _worker(docs)["env"] = []
    _assert_fails(check_roles(docs), "KubeRay injected it: set RAY_ADDRESS=auto")


def test_ray_address_in_a_worker_config_map_does_not_help(rendered):
    """RAY_ADDRESS=auto via envFrom still loses to KubeRay's injected env entry."""
    docs = _gpu_prod(rendered)
    _find(docs, "ConfigMap", "swe-fleet-worker")["data"]["RAY_ADDRESS"] = "auto"
    _worker(docs)["env"] = []
    _assert_fails(check_roles(docs), "KubeRay injected it")


def test_role_config_map_with_a_gcs_address_fails(rendered):
    """Only client ConfigMaps carry a RAY_ADDRESS: a worker's is refused even when masked."""
    docs = _gpu_prod(rendered)
    _find(docs, "ConfigMap", "swe-fleet-worker")["data"]["RAY_ADDRESS"] = "swe-fleet-head-svc:6379"
    _assert_fails(check_roles(docs), "ConfigMap swe-fleet/swe-fleet-worker: data", "unset or 'auto'")


def test_head_loading_the_worker_config_map_fails(rendered):
    """A head pod must run with SWE_FLEET_ROLE=head."""
    docs = _gpu_prod(rendered)
    head = _find(docs, "RayCluster", "swe-fleet")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][
        0
    ]
    head["envFrom"] = [{"configMapRef": {"name": "swe-fleet-worker"}}]
    _assert_fails(check_roles(docs), "SWE_FLEET_ROLE is 'worker' in a Ray head pod")


def test_client_pointed_at_the_gcs_port_fails(rendered):
    """A client RAY_ADDRESS that is a GCS address is refused, with the address to use instead."""
    docs = _gpu_prod(rendered)
    data = _find(docs, "ConfigMap", "swe-fleet-client", "swe-fleet-clients")["data"]
    data["RAY_ADDRESS"] = "swe-fleet-dashboard.swe-fleet.svc.cluster.local:6379"
    _assert_fails(check_roles(docs), "as a client", "GCS address", "http://swe-fleet-dashboard")


def test_client_address_naming_no_service_fails(rendered):
    """The client's Jobs API URL must name the dashboard Service and one of its ports."""
    docs = _gpu_prod(rendered)
    data = _find(docs, "ConfigMap", "swe-fleet-client", "swe-fleet-clients")["data"]
    data["RAY_ADDRESS"] = "http://swe-fleet-head.swe-fleet.svc.cluster.local:8265"
    _assert_fails(check_references(docs), "Service swe-fleet/swe-fleet-head does not exist")
    data["RAY_ADDRESS"] = "http://swe-fleet-dashboard.swe-fleet.svc.cluster.local:8266"
    _assert_fails(check_references(docs), "port 8266 is not a port of Service")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: _doctor(d)["env"].append({"name": "RAY_AUTH_TOKEN", "value": "s3cr3t"}),
            "env RAY_AUTH_TOKEN: a literal secret",
        ),
        (
            lambda d: d.append(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "t", "namespace": "swe-fleet"},
                    "stringData": {"auth_token": "s3cr3t"},
                }
            ),
            "a Secret in the repository",
        ),
        (
            lambda d: _find(d, "ConfigMap", "swe-fleet-head")["data"].update(RAY_AUTH_TOKEN="s3cr3t"),
            "a secret in a ConfigMap",
        ),
        (
            lambda d: _find(d, "Role", "swe-fleet-submitter")["rules"][-1].pop("resourceNames"),
            "grants every Secret of the namespace",
        ),
    ],
)
def test_baked_secret_fails(rendered, mutate, needle):
    """Secrets never live in manifests: not as env values, Secret resources or ConfigMap data,
    and no Role reads every Secret."""
    docs = _gpu_prod(rendered)
    mutate(docs)
    _assert_fails(check_secrets(docs), needle)


def test_secret_the_readme_does_not_explain_fails(rendered):
    """Every out-of-band Secret a manifest reads is documented (how to create it)."""
    _assert_fails(
        check_secrets(_gpu_prod(rendered), readme=""), "Secret swe-fleet-clients/swe-fleet-ray-token"
    )


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: _find(d, "RoleBinding", "swe-fleet-submitter")["subjects"][0].update(
                namespace="swe-fleet"
            ),
            "subject ServiceAccount swe-fleet/swe-fleet-submitter does not exist",
        ),
        (
            lambda d: _find(d, "RoleBinding", "swe-fleet-submitter")["roleRef"].update(name="submitter"),
            "roleRef Role 'submitter' does not exist",
        ),
        (
            lambda d: _find(d, "Service", "swe-fleet-dashboard")["spec"]["selector"].update(
                {"ray.io/cluster": "fleet"}
            ),
            "RayCluster 'fleet', which does not exist",
        ),
        (
            lambda d: _worker(d)["envFrom"][0]["configMapRef"].update(name="swe-fleet-workers"),
            "envFrom ConfigMap 'swe-fleet-workers' does not exist",
        ),
        (
            lambda d: _find(d, "Job", "swe-fleet-doctor", "swe-fleet-clients")["spec"]["template"][
                "spec"
            ].update(serviceAccountName="submitter"),
            "ServiceAccount 'submitter' does not exist in swe-fleet-clients",
        ),
    ],
)
def test_dangling_reference_fails(rendered, mutate, needle):
    """Roles, accounts, ConfigMaps and the head a Service selects must exist."""
    docs = _gpu_prod(rendered)
    mutate(docs)
    _assert_fails(check_all(docs), needle)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda d: _find(d, "RayCluster", "swe-fleet")["spec"].update(rayVersion="2.59.0"),
            "'2.59.0' but the image",
        ),
        (
            lambda d: _rayjob(d)["spec"]["rayClusterSpec"].pop("authOptions"),
            "authOptions.mode: must be token",
        ),
        (
            lambda d: _worker(d).update(image="registry.example.com/swe-fleet:0.0.9-gpu"),
            "tag must start with",
        ),
        (
            lambda d: _doctor(d).update(image="registry.example.com/swe-fleet:0.1.0"),
            "one rendering runs one swe-fleet image",
        ),
    ],
)
def test_version_drift_fails(rendered, mutate, needle):
    """rayVersion follows pyproject's Ray; images carry the project version, one per rendering."""
    docs = _gpu_prod(rendered)
    mutate(docs)
    _assert_fails(check_all(docs), needle)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s.pop("shutdownAfterJobFinishes"), "acts only with shutdownAfterJobFinishes"),
        (lambda s: s.update(runtimeEnvYAML="working_dir: .\n"), "HTTPMode uploads nothing"),
        (lambda s: s.update(runtimeEnvYAML="- a\n"), "must be a mapping"),
        (
            lambda s: s.update(
                entrypoint="python /opt/swe-fleet/jobs/council.py --spec /etc/swe-fleet/council/spec.yaml"
            ),
            "has no key 'spec.yaml'",
        ),
    ],
)
def test_rayjob_that_cannot_do_what_it_says_fails(rendered, mutate, needle):
    """A TTL without shutdown, a local working_dir in HTTPMode, a spec path that is not mounted."""
    docs = _gpu_prod(rendered)
    mutate(_rayjob(docs)["spec"])
    _assert_fails(check_all(docs), needle)


def test_invalid_council_spec_in_the_config_map_fails(rendered):
    """The council spec a job or doctor reads is loaded with CouncilSpec: a bad one is caught."""
    docs = _gpu_prod(rendered)
    cm = _find(docs, "ConfigMap", "swe-fleet-council")
    spec = yaml.safe_load(cm["data"]["council.yaml"])
    spec["agents"] = spec["agents"][:1]
    cm["data"]["council.yaml"] = yaml.safe_dump(spec)
    _assert_fails(check_all(docs), "not a valid council spec", "agents")


def test_patch_whose_target_matches_nothing_fails(tmp_path):
    """kustomize skips a patch whose target names no resource; the check reports that patch."""
    root = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, root, ignore=shutil.ignore_patterns("crds"))
    shutil.copytree(K8S_DIR.parent / "nats", tmp_path / "nats")  # the base includes ../../nats
    kfile = root / "overlays/cpu-local/kustomization.yaml"
    kfile.write_text(kfile.read_text().replace("name: swe-fleet-models", "name: swe-fleet-model", 1))
    _assert_fails(
        patches_without_effect(root, "overlays/cpu-local"), "patches[1]", "changes nothing", "swe-fleet-model"
    )


def test_missing_kubectl_fails_naming_what_to_install(monkeypatch, tmp_path):
    """Without kubectl the manifest checks fail (never skip) and say to install kubectl with kustomize v5."""
    monkeypatch.setenv("PATH", str(tmp_path))
    tools.kubectl.cache_clear()
    try:
        with pytest.raises(ToolMissing, match=r"install kubectl .*kustomize v5"):
            kustomize(K8S_DIR / "base")
    finally:
        tools.kubectl.cache_clear()
