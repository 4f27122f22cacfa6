"""NATS credentials and TLS from the NATS CLI's variables: read, checked, never shown."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from swe_fleet.errors import ConfigError, SpecError
from swe_fleet.nats.auth import NatsAuth, refuse_credentials_in_url
from swe_fleet.nats.connection import _refusal
from swe_fleet.spec import CouncilSpec


def _secret(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(f"{value}\n")
    return str(path)


def test_secrets_are_read_from_files_and_never_shown(tmp_path: Path) -> None:
    """NATS_PASSWORD_FILE / NATS_TOKEN_FILE: the value is read (trailing newline dropped) and
    reaches nats.connect, but neither repr nor describe shows it."""
    auth = NatsAuth.from_env(
        {"NATS_USER": "alice", "NATS_PASSWORD_FILE": _secret(tmp_path, "pw", "hunter2-xyz")}
    )
    assert auth.connect_options("nats://h:4222") == {"user": "alice", "password": "hunter2-xyz"}
    assert "hunter2-xyz" not in repr(auth) + auth.describe() + str(auth)
    assert auth.describe("nats://h:4222") == "user alice with a password, no TLS"
    token = NatsAuth.from_env({"NATS_TOKEN_FILE": _secret(tmp_path, "tok", "t0k3n-abc")})
    assert token.connect_options("nats://h:4222") == {"token": "t0k3n-abc"}
    assert "t0k3n-abc" not in repr(token) and token.describe() == "a token, no TLS"


def test_values_work_for_a_laptops_shell() -> None:
    """NATS_PASSWORD and NATS_TOKEN as values, like the NATS CLI."""
    assert NatsAuth.from_env({"NATS_TOKEN": "v"}).connect_options("nats://h") == {"token": "v"}
    both = NatsAuth.from_env({"NATS_USER": "u", "NATS_PASSWORD": "p"})
    assert both.connect_options("nats://h") == {"user": "u", "password": "p"}


@pytest.mark.parametrize(
    ("env", "setting", "said"),
    [
        ({"NATS_TOKEN": "a", "NATS_TOKEN_FILE": "/x"}, "NATS_TOKEN", "both NATS_TOKEN and NATS_TOKEN_FILE"),
        ({"NATS_TOKEN_FILE": "/no/such/file"}, "NATS_TOKEN_FILE", "cannot be read"),
        ({"NATS_USER": "u", "NATS_TOKEN": "t", "NATS_PASSWORD": "p"}, "NATS_TOKEN", "use one way"),
        ({"NATS_PASSWORD": "p"}, "NATS_USER", "without NATS_USER"),
        ({"NATS_USER": "u"}, "NATS_PASSWORD", "without NATS_PASSWORD"),
        ({"NATS_CREDS": "/no/such.creds"}, "NATS_CREDS", "not a readable file"),
    ],
)
def test_contradictory_or_missing_settings_name_the_variable(
    env: dict[str, str], setting: str, said: str
) -> None:
    with pytest.raises(ConfigError) as info:
        NatsAuth.from_env(env)
    assert info.value.setting == setting and said in str(info.value)


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = _secret(tmp_path, "c.pem", "x")
    with pytest.raises(ConfigError, match="NATS_CERT and NATS_KEY go together"):
        NatsAuth.from_env({"NATS_CERT": cert})


def test_tls_is_on_with_a_ca_or_a_tls_url_and_off_otherwise(tmp_path: Path) -> None:
    """A tls:// URL uses the system's CAs; NATS_CA pins the server's CA; plain nats:// without
    settings has no TLS."""
    import trustme

    ca = trustme.CA()
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    plain = NatsAuth()
    assert plain.ssl_context("nats://h:4222") is None and "tls" not in plain.connect_options("nats://h:4222")
    assert isinstance(plain.ssl_context("tls://h:4222"), ssl.SSLContext)
    pinned = NatsAuth.from_env({"NATS_CA": str(ca_path)})
    assert isinstance(pinned.connect_options("nats://h:4222")["tls"], ssl.SSLContext)
    assert pinned.describe("nats://h:4222") == f"no credentials, TLS (CA {ca_path})"


@pytest.mark.parametrize("url", ["nats://alice:pw@h:4222", "nats://s3cret@h:4222", "tls://u:@h:4222"])
def test_a_url_with_credentials_is_refused_naming_the_variables_to_use(url: str) -> None:
    """In the spec (publish.nats_url) and for every client: the secret would travel with the URL."""
    with pytest.raises(ConfigError) as info:
        refuse_credentials_in_url(url, setting="--nats-url")
    assert "NATS_USER and NATS_PASSWORD_FILE" in str(info.value) and info.value.setting == "--nats-url"
    doc = {
        "tasks": [{"id": "t", "prompt": "x"}],
        "agents": [{"id": "a", "role": "a"}, {"id": "b", "role": "b"}],
    }
    with pytest.raises(SpecError) as spec_info:
        CouncilSpec.from_dict({**doc, "publish": {"nats_url": url}})
    assert spec_info.value.field == "publish.nats_url" and "carries credentials" in str(spec_info.value)
    assert refuse_credentials_in_url("nats://h:4222") == "nats://h:4222"


def test_refusals_are_told_apart_from_outages() -> None:
    """What the server or the TLS handshake says becomes a refusal naming what to set; an outage
    is not a refusal."""
    auth = NatsAuth(token="x")
    said = _refusal(Exception("nats: 'Authorization Violation'"), "nats://h:4222", auth)
    assert (
        said is not None
        and "refused the credentials" in said
        and "a token" in said
        and "x" not in said.split("(")[0]
    )
    untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    untrusted.verify_message = "unable to get local issuer certificate"
    said = _refusal(untrusted, "tls://h:4222", auth)
    assert said is not None and "not trusted" in said and "NATS_CA" in said
    assert _refusal(ConnectionRefusedError(111, "Connection refused"), "nats://h:4222", auth) is None


def test_a_bad_nkey_seed_or_creds_file_is_refused_before_any_connection(tmp_path: Path) -> None:
    """The nkeys library's own errors, and a creds file nats-py would loop on forever, become a
    ConfigError naming the variable."""
    seed = tmp_path / "user.nk"
    seed.write_text("SUANOTASEED\n")
    with pytest.raises(ConfigError) as info:
        NatsAuth.from_env({"NATS_NKEY": str(seed)})
    assert info.value.setting == "NATS_NKEY" and "does not hold an NKey seed" in str(info.value)
    creds = tmp_path / "user.creds"
    creds.write_text("just a token\n")
    with pytest.raises(ConfigError) as info:
        NatsAuth.from_env({"NATS_CREDS": str(creds)})
    assert info.value.setting == "NATS_CREDS" and "BEGIN NATS USER JWT" in str(info.value)


def test_dropped_tls_connections_and_slow_authentication_are_not_refusals() -> None:
    """A server restarting mid-handshake (TLS EOF) or an authentication timeout may pass: they
    are retried like an outage, not reported as a refusal."""
    auth = NatsAuth()
    assert _refusal(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "tls://h:4222", auth) is None
    assert _refusal(Exception("nats: 'Authentication Timeout'"), "nats://h:4222", auth) is None
