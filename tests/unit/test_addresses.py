"""Addresses resolve per role from the environment; wrong schemes are refused with advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from swe_fleet.addresses import (
    ClusterAddresses,
    Role,
    auth_token_from_env,
    jobs_api_url,
    ray_client_url,
)
from swe_fleet.errors import AddressError


def test_client_defaults_derive_every_address_from_loopback() -> None:
    """With nothing set, a client gets loopback addresses on Ray's default ports."""
    a = ClusterAddresses.from_env(Role.CLIENT, env={})
    assert a.dashboard_url == "http://127.0.0.1:8265"
    assert a.client_url == "ray://127.0.0.1:10001"
    assert a.gcs_address == "127.0.0.1:6379"
    assert a.namespace == "swe-fleet"
    assert a.ray_address == "http://127.0.0.1:8265"


def test_ray_host_and_ports_derive_the_rest() -> None:
    """RAY_HOST, RAY_PORT and RAY_DASHBOARD_PORT derive all addresses when RAY_ADDRESS is unset."""
    env = {
        "RAY_HOST": "head.svc",
        "RAY_PORT": "6380",
        "RAY_DASHBOARD_PORT": "9265",
        "RAY_CLIENT_PORT": "10002",
        "RAY_NAMESPACE": "team-a",
    }
    a = ClusterAddresses.from_env("client", env=env)
    assert (a.dashboard_url, a.client_url, a.gcs_address, a.namespace) == (
        "http://head.svc:9265",
        "ray://head.svc:10002",
        "head.svc:6380",
        "team-a",
    )


def test_client_http_ray_address_sets_host_and_dashboard_port() -> None:
    """A client's RAY_ADDRESS=http://... is the dashboard; the client URL follows its host."""
    a = ClusterAddresses.from_env(Role.CLIENT, env={"RAY_ADDRESS": "http://10.0.0.5:18265"})
    assert a.dashboard_url == "http://10.0.0.5:18265"
    assert a.client_url == "ray://10.0.0.5:10001"


def test_client_ray_scheme_address_derives_dashboard() -> None:
    """A client's RAY_ADDRESS=ray://... keeps its port and derives the dashboard URL."""
    a = ClusterAddresses.from_env(Role.CLIENT, env={"RAY_ADDRESS": "ray://head:20001"})
    assert a.client_url == "ray://head:20001"
    assert a.dashboard_url == "http://head:8265"


def test_client_gcs_address_is_refused_with_alternatives() -> None:
    """A GCS host:6379 on a client is refused; the error names the http and ray addresses."""
    with pytest.raises(AddressError) as info:
        ClusterAddresses.from_env(Role.CLIENT, env={"RAY_ADDRESS": "head:6379"})
    msg = str(info.value)
    assert "http://head:8265" in msg and "ray://head:10001" in msg and "GCS" in msg


def test_client_auto_is_refused() -> None:
    """RAY_ADDRESS=auto only works on cluster nodes; a client gets told what to use."""
    with pytest.raises(AddressError, match="only works on cluster nodes"):
        ClusterAddresses.from_env(Role.CLIENT, env={"RAY_ADDRESS": "auto"})


@pytest.mark.parametrize("role", [Role.HEAD, Role.WORKER])
@pytest.mark.parametrize("value", ["", "auto"])
def test_nodes_accept_unset_or_auto(role: Role, value: str) -> None:
    """On head and worker RAY_ADDRESS is unset or auto, and ray_address is auto."""
    a = ClusterAddresses.from_env(role, env={"RAY_ADDRESS": value, "RAY_HOST": "10.1.1.1"})
    assert a.ray_address == "auto"
    assert a.gcs_address == "10.1.1.1:6379"


@pytest.mark.parametrize("role", [Role.HEAD, Role.WORKER])
def test_nodes_refuse_explicit_ray_address(role: Role) -> None:
    """A head or worker with RAY_ADDRESS set to a URL is refused: scattered settings end here."""
    with pytest.raises(AddressError, match="must be unset or 'auto'"):
        ClusterAddresses.from_env(role, env={"RAY_ADDRESS": "http://head:8265"})


def test_role_comes_from_swe_fleet_role() -> None:
    """SWE_FLEET_ROLE picks the role when none is passed."""
    assert ClusterAddresses.from_env(env={"SWE_FLEET_ROLE": "worker"}).role is Role.WORKER


def test_bad_port_is_named() -> None:
    """A non-numeric port names its variable."""
    with pytest.raises(AddressError, match="RAY_DASHBOARD_PORT"):
        ClusterAddresses.from_env(Role.CLIENT, env={"RAY_DASHBOARD_PORT": "http"})


def test_jobs_api_refuses_ray_client_url() -> None:
    """ray:// where the Jobs API needs http:// is refused, naming the http URL to use."""
    with pytest.raises(AddressError, match=r"use http://head:8265"):
        jobs_api_url("ray://head:10001")


def test_jobs_api_refuses_gcs_address() -> None:
    """A GCS host:port for the Jobs API is refused with the dashboard URL to use."""
    with pytest.raises(AddressError, match=r"http://10\.0\.0\.1:8265"):
        jobs_api_url("10.0.0.1:6379")


def test_jobs_api_accepts_http_and_strips_slash() -> None:
    """http(s) dashboard URLs pass through without a trailing slash."""
    assert jobs_api_url("https://ray.example:443/") == "https://ray.example:443"


def test_ray_client_url_refuses_http() -> None:
    """ray.init from outside needs ray://; an http URL is refused with the ray:// URL."""
    with pytest.raises(AddressError, match="ray://head:10001"):
        ray_client_url("http://head:8265")
    assert ray_client_url("ray://head:10001") == "ray://head:10001"


def test_unknown_scheme_is_refused() -> None:
    """An unknown scheme gets the two valid forms."""
    with pytest.raises(AddressError, match="unknown scheme 'grpc'"):
        jobs_api_url("grpc://head:8265")


def test_auth_token_prefers_env_then_path_then_home(tmp_path: Path) -> None:
    """RAY_AUTH_TOKEN wins; then RAY_AUTH_TOKEN_PATH; then ~/.ray/auth_token; else None."""
    token_file = tmp_path / "tok"
    token_file.write_text("from-file\n")
    home = tmp_path / "home"
    assert auth_token_from_env({"RAY_AUTH_TOKEN": "abc"}, home=home) == "abc"
    assert auth_token_from_env({"RAY_AUTH_TOKEN_PATH": str(token_file)}, home=home) == "from-file"
    assert auth_token_from_env({}, home=home) is None
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("home-token")
    assert auth_token_from_env({}, home=home) == "home-token"
