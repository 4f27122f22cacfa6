"""images/compose.yaml: Docker Compose v2 loads it (`docker compose config`: interpolation, schema,
consistency) and it follows the project's rules; copies carrying a real mistake fail with a message
naming it."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from support.manifests import Problem, describe, tools
from support.manifests.compose import (
    check_compose,
    load_compose,
    node_role,
    validate_compose_data,
    validate_compose_file,
    validate_compose_text,
)
from support.manifests.project import COMPOSE_FILE, nats_server_version
from support.manifests.tools import ToolMissing

Compose = dict[str, Any]


@pytest.fixture(scope="module")
def compose() -> Compose:
    """Docker Compose's canonical model of the file with no variables set."""
    data, problems = load_compose(COMPOSE_FILE.read_text())
    assert data is not None and not problems, describe(problems)
    return data


@pytest.fixture
def copy_of(compose: Compose) -> Compose:
    """A copy to break: the project's rules take it as it is (Docker Compose's canonical form);
    mistakes that Docker Compose itself must catch go through it again (validate_compose_data)."""
    return copy.deepcopy(compose)


def _assert_fails(problems: list[Problem], *needles: str) -> None:
    text = describe(problems)
    assert problems, "the mistake was not caught"
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"


# ---- the real file ----------------------------------------------------------------------------


def test_compose_file_passes_with_only_the_nats_role_keys_set():
    """Defaults make the file complete but for the NATS roles' public keys (per deployment, made
    by `swe-fleet nats keys`); Docker Compose and the project rules accept it."""
    problems = validate_compose_file()
    assert not problems, describe(problems)


def test_without_the_nats_role_keys_docker_compose_names_them_and_the_command():
    """No public keys: `docker compose` refuses, naming the variable and how to make the keys."""
    data, problems = load_compose(COMPOSE_FILE.read_text(), role_keys=False)
    assert data is None
    _assert_fails(
        problems, "SWE_FLEET_", "_NKEY", "swe-fleet nats keys DIR", "--env-file DIR/nats-server.env"
    )


def test_compose_file_passes_with_every_variable_set():
    """Overriding the image, models folder and vLLM names keeps it valid."""
    env = {
        "SWE_FLEET_IMAGE": "registry.example.com/swe-fleet:0.1.0-gpu",
        "SWE_FLEET_HEAD_NUM_CPUS": "4",
        "SWE_FLEET_MODELS_DIR": "/srv/models",
        "VLLM_MODEL_DIR": "smollm2",
        "VLLM_SERVED_MODEL_NAME": "smollm2",
    }
    problems = validate_compose_file(env=env)
    assert not problems, describe(problems)


def test_services_are_head_gpu_worker_nats_and_optional_vllm(compose):
    """The node entrypoint makes ray-head a head and ray-gpu-worker a worker; vLLM is a profile."""
    services = compose["services"]
    assert node_role(services["ray-head"]) == "head"
    assert node_role(services["ray-gpu-worker"]) == "worker"
    assert services["vllm"]["profiles"] == ["vllm"]
    assert services["nats"]["image"] == f"nats:{nats_server_version()}-alpine"


def test_every_service_has_a_health_check(compose):
    """Each service declares its own check (depends_on: service_healthy relies on them)."""
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"][0] == "CMD", name


# ---- mistakes that must fail ------------------------------------------------------------------


def test_service_without_health_check_fails(copy_of):
    """Dropping a service's healthcheck is reported for that service."""
    del copy_of["services"]["nats"]["healthcheck"]
    _assert_fails(check_compose(copy_of), "services.nats", "no healthcheck")


def test_disabled_health_check_fails(copy_of):
    """healthcheck: {disable: true} counts as none."""
    copy_of["services"]["ray-gpu-worker"]["healthcheck"] = {"disable": True}
    _assert_fails(check_compose(copy_of), "services.ray-gpu-worker", "no healthcheck")


def test_misspelt_compose_key_fails(copy_of):
    """Docker Compose rejects an unknown service key, naming it."""
    copy_of["services"]["ray-head"]["helthcheck"] = copy_of["services"]["ray-head"].pop("healthcheck")
    _assert_fails(validate_compose_data(copy_of), "services.ray-head additional properties 'helthcheck'")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c["services"]["ray-head"].update(init="maybe"), "invalid boolean: maybe"),
        (
            lambda c: c["services"]["nats"]["healthcheck"].update(interval="10 parsecs"),
            'unknown unit " parsecs"',
        ),
        (
            lambda c: c["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][
                0
            ].update(capabilities="gpu"),
            "capabilities must be a array",
        ),
        (
            lambda c: c["services"]["ray-gpu-worker"]["depends_on"]["ray-head"].update(
                condition="service_helthy"
            ),
            "condition value must be one of 'service_started'",
        ),
    ],
)
def test_wrong_type_or_value_fails(copy_of, mutate, needle):
    """Types and enums of the Compose Specification are enforced."""
    mutate(copy_of)
    _assert_fails(validate_compose_data(copy_of), needle)


def test_worker_with_ray_address_set_fails(copy_of):
    """A worker node with RAY_ADDRESS is refused by swe_fleet.addresses, which says what to do."""
    copy_of["services"]["ray-gpu-worker"]["environment"]["RAY_ADDRESS"] = "ray-head:6379"
    _assert_fails(check_compose(copy_of), "services.ray-gpu-worker", "as a worker", "unset or 'auto'")


def test_node_that_cannot_find_a_head_fails(copy_of):
    """Without HEAD_ADDRESS and without a head whitelist the node entrypoint has no head."""
    env = copy_of["services"]["ray-gpu-worker"]["environment"]
    del env["HEAD_ADDRESS"], env["SWE_FLEET_HEAD_HOSTS"]
    _assert_fails(check_compose(copy_of), "cannot find or become a head")


def test_head_whose_hostname_is_not_whitelisted_fails(copy_of):
    """The head's hostname must be in SWE_FLEET_HEAD_HOSTS, or no node becomes the head."""
    copy_of["services"]["ray-head"]["hostname"] = "head-1"
    _assert_fails(check_compose(copy_of), "no Ray head")


def test_role_set_against_the_node_entrypoint_fails(copy_of):
    """SWE_FLEET_ROLE is the entrypoint's to set; a contradicting value is caught."""
    copy_of["services"]["ray-head"]["environment"]["SWE_FLEET_ROLE"] = "worker"
    _assert_fails(check_compose(copy_of), "leave SWE_FLEET_ROLE to it")


def test_token_in_the_environment_fails(copy_of):
    """The token travels as a compose secret (a file), never as an environment variable."""
    copy_of["services"]["ray-head"]["environment"]["RAY_AUTH_TOKEN"] = "s3cr3t"
    _assert_fails(check_compose(copy_of), "environment.RAY_AUTH_TOKEN", "use a compose secret")


def test_token_interpolated_into_the_environment_fails():
    """`RAY_AUTH_TOKEN: ${RAY_AUTH_TOKEN}` in the file puts the shell's token in every node's env: caught."""
    line = "    RAY_AUTH_MODE: token\n"
    text = COMPOSE_FILE.read_text()
    assert line in text, "the compose file changed: update this test"
    text = text.replace(line, line + "    RAY_AUTH_TOKEN: ${RAY_AUTH_TOKEN}\n", 1)
    _assert_fails(
        validate_compose_text(text, env={"RAY_AUTH_TOKEN": "s3cr3t"}),
        "services.ray-head.environment.RAY_AUTH_TOKEN",
        "services.ray-gpu-worker.environment.RAY_AUTH_TOKEN",
        "(and here it has a value)",
    )


def test_secret_from_a_file_next_to_the_compose_file_fails(copy_of):
    """A secret file beside the compose file ends up in git: environment or external only."""
    copy_of["secrets"]["ray_auth_token"] = {"file": "./ray_auth_token"}
    _assert_fails(check_compose(copy_of), "secrets.ray_auth_token", "must come from the environment")


def test_node_without_its_token_secret_fails(copy_of):
    """RAY_AUTH_TOKEN_PATH under /run/secrets needs that secret mounted."""
    copy_of["services"]["ray-gpu-worker"]["secrets"] = []
    _assert_fails(check_compose(copy_of), "does not mount the secret 'ray_auth_token'")


def test_node_without_token_auth_fails(copy_of):
    """Every Ray node runs with token auth."""
    del copy_of["services"]["ray-gpu-worker"]["environment"]["RAY_AUTH_MODE"]
    _assert_fails(check_compose(copy_of), "RAY_AUTH_MODE: must be token")


def test_head_without_published_dashboard_fails(copy_of):
    """Clients need the dashboard (Jobs API) and Ray Client ports."""
    ports = copy_of["services"]["ray-head"]["ports"]
    copy_of["services"]["ray-head"]["ports"] = [p for p in ports if p["target"] != 8265]
    _assert_fails(check_compose(copy_of), "8265 (dashboard / Jobs API) is not published")


def test_published_gcs_port_fails(copy_of):
    """The GCS port is cluster-internal: publishing it is refused."""
    ports = copy_of["services"]["ray-head"]["ports"]
    ports.append({**ports[0], "target": 6379, "published": "6379"})
    _assert_fails(check_compose(copy_of), "6379 (GCS) is published")


def test_gpu_worker_without_gpu_reservation_fails(copy_of):
    """SWE_FLEET_NUM_GPUS without a device reservation would start a worker with no GPU."""
    del copy_of["services"]["ray-gpu-worker"]["deploy"]
    _assert_fails(check_compose(copy_of), "SWE_FLEET_NUM_GPUS=1 but 0 GPU(s) reserved")


def test_depends_on_an_unknown_service_fails(copy_of):
    """Docker Compose's consistency check names the service that does not exist."""
    copy_of["services"]["ray-gpu-worker"]["depends_on"] = {"ray-hed": {"condition": "service_healthy"}}
    _assert_fails(validate_compose_data(copy_of), 'depends on undefined service "ray-hed"')


def test_undeclared_named_volume_fails(copy_of):
    """A named volume must be declared at the top level."""
    copy_of["services"]["nats"]["volumes"] = ["nats-dta:/data"]
    _assert_fails(validate_compose_data(copy_of), "refers to undefined volume nats-dta")


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda s: s.update(image="nats:2.10.0-alpine"), "pin the nats-server version"),
        (lambda s: s.update(command=["nats-server", "--store_dir", "/data"]), "JetStream is off"),
        (lambda s: s.update(volumes=[]), "is not on a volume"),
    ],
)
def test_nats_without_pinned_jetstream_on_a_volume_fails(copy_of, mutate, needle):
    """NATS runs the local stack's server version, with JetStream, its store on a volume."""
    mutate(copy_of["services"]["nats"])
    _assert_fails(check_compose(copy_of), "services.nats", needle)


def test_image_of_another_version_fails(copy_of):
    """swe-fleet images carry the project version."""
    copy_of["services"]["ray-head"]["image"] = "swe-fleet:0.0.9-gpu"
    _assert_fails(check_compose(copy_of), "tag must start with the project version")


def test_variable_without_default_fails():
    """${VAR} with no default would leave a hole when no .env is present."""
    text = COMPOSE_FILE.read_text().replace(
        "${SWE_FLEET_IMAGE:-swe-fleet:0.1.0-gpu}", "${SWE_FLEET_IMAGE}", 1
    )
    _data, problems = load_compose(text)
    _assert_fails(problems, 'The "SWE_FLEET_IMAGE" variable is not set', "give it a default")


def test_undefined_secret_fails(copy_of):
    """A service mounting a secret the file does not define is refused by Docker Compose."""
    copy_of["services"]["ray-head"]["secrets"] = [{"source": "ray_token"}]
    _assert_fails(validate_compose_data(copy_of), "refers to undefined secret ray_token")


def test_missing_docker_compose_fails_naming_what_to_install(monkeypatch, tmp_path):
    """Without the Docker Compose binary the checks fail (never skip) and say to run `make venv`."""
    monkeypatch.setattr(tools, "DOCKER_COMPOSE", tmp_path / "docker-compose")
    tools.docker_compose.cache_clear()
    try:
        with pytest.raises(ToolMissing, match=r"run `make venv`"):
            validate_compose_file()
    finally:
        tools.docker_compose.cache_clear()


def test_nats_without_a_role_key_tls_secret_or_the_shipped_config_fails(copy_of):
    """The permission model's server: each variable its config reads, TLS files from secrets,
    and the shipped config itself mounted."""
    nats = copy_of["services"]["nats"]
    del nats["environment"]["SWE_FLEET_JOB_NKEY"]
    nats["secrets"] = [s for s in nats["secrets"] if s["source"] != "nats_tls_key"]
    nats["volumes"] = [v for v in nats["volumes"] if not str(v.get("target", "")).endswith(".conf")]
    _assert_fails(
        check_compose(copy_of),
        "services.nats.environment.SWE_FLEET_JOB_NKEY: unset",
        "services.nats.environment.NATS_TLS_KEY: must name one of the service's secrets",
        "must be images/nats/nats-server.conf",
    )
