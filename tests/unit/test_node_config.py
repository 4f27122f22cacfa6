"""The node entrypoint's configuration from the environment: every variable checked and named."""

from __future__ import annotations

import pytest

from swe_fleet.errors import AddressError, NodeConfigError
from swe_fleet.node.config import NodeConfig


def config(hostname: str = "node-a", **env: str) -> NodeConfig:
    return NodeConfig.from_env(env, hostname=hostname)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "HEAD_ADDRESS"),
        ({"HEAD_ADDRESS": "http://ray-head:8265"}, "HEAD_ADDRESS"),
        ({"HEAD_ADDRESS": "ray-head:port"}, "HEAD_ADDRESS"),
        ({"HEAD_ADDRESS": "h", "SWE_FLEET_NUM_CPUS": "two"}, "SWE_FLEET_NUM_CPUS"),
        ({"HEAD_ADDRESS": "h", "SWE_FLEET_MEMORY": "0"}, "SWE_FLEET_MEMORY"),
        ({"HEAD_ADDRESS": "h", "SWE_FLEET_RESOURCES": "[1]"}, "SWE_FLEET_RESOURCES"),
        ({"HEAD_ADDRESS": "h", "SWE_FLEET_HEAD_WAIT_S": "-1"}, "SWE_FLEET_HEAD_WAIT_S"),
        ({"HEAD_ADDRESS": "h", "SWE_FLEET_PROBE_TIMEOUT_S": "0"}, "SWE_FLEET_PROBE_TIMEOUT_S"),
    ],
)
def test_bad_environment_is_one_error_naming_the_variable(env: dict[str, str], variable: str) -> None:
    """Each malformed or missing variable: NodeConfigError with .variable and the name in the text."""
    with pytest.raises(NodeConfigError) as info:
        config(**env)
    assert info.value.variable == variable and variable in str(info.value)


def test_client_address_in_ray_address_on_a_node_is_refused_with_head_address_named() -> None:
    """RAY_ADDRESS=http://... on a node: AddressError telling to use HEAD_ADDRESS instead."""
    with pytest.raises(AddressError, match="HEAD_ADDRESS"):
        config(HEAD_ADDRESS="h", RAY_ADDRESS="http://h:8265")
    assert config(HEAD_ADDRESS="h", RAY_ADDRESS="auto").head_address == ("h", 6379)


def test_token_mode_without_a_token_is_refused_and_never_generated() -> None:
    """RAY_AUTH_MODE=token and no token found: NodeConfigError naming RAY_AUTH_TOKEN."""
    cfg = config(HEAD_ADDRESS="h", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH="/secrets/ray")
    with pytest.raises(NodeConfigError, match="/secrets/ray") as info:
        cfg.check_auth(token_available=False)
    assert info.value.variable == "RAY_AUTH_TOKEN"
    cfg.check_auth(token_available=True)
    config(HEAD_ADDRESS="h").check_auth(token_available=False)  # auth not asked for: fine
