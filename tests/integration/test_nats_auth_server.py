"""NATS credentials and TLS against real nats-servers configured for them.

For each way in (a token, a user and password, an NKey, a credentials file on an operator-mode
server, TLS with the server's CA, mutual TLS) the job's publisher
(:class:`~swe_fleet.nats.publisher.JetStreamPublisher`, the same code a council job runs)
publishes a council's events with the credentials read from files named by the NATS CLI's
variables, and ``swe-fleet consume`` reads every one of them back with the same variables.
Wrong credentials and an untrusted CA fail at once with one line naming what to set, exit 5.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from swe_fleet.errors import NatsRefused
from swe_fleet.local.stack import NatsServer
from swe_fleet.nats.auth import NatsAuth
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.nats.publisher import JetStreamPublisher
from swe_fleet.spec import PublishSpec

from support.councils import propose_events

pytestmark = pytest.mark.integration

SWE_FLEET = str(Path(sys.executable).parent / "swe-fleet")
SECRET = "s3cret-zq81-not-in-any-log"


@dataclass
class Secured:
    """A nats-server that requires one way in, and the variables a client sets to use it."""

    server: NatsServer
    env: dict[str, str]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA (trustme), the server's certificate for 127.0.0.1 and a client certificate."""
    import trustme

    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("swe-fleet-client@example.org")
    files = {
        "ca": d / "ca.pem",
        "server_cert": d / "server.pem",
        "server_key": d / "server.key",
        "client_cert": d / "client.pem",
        "client_key": d / "client.key",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server_cert"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client.cert_chain_pems[0].write_to_path(str(files["client_cert"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    other = trustme.CA()  # signed nothing of ours: "untrusted"
    files["other_ca"] = d / "other-ca.pem"
    other.cert_pem.write_to_path(str(files["other_ca"]))
    return files


def _nkey(d: Path) -> tuple[Path, str]:
    """A user NKey: its seed file and its public key."""
    import nacl.signing
    import nkeys

    seed = nkeys.encode_seed(nacl.signing.SigningKey.generate().encode(), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    path = d / "user.nk"
    path.write_bytes(seed)
    path.chmod(0o600)
    return path, public


def _operator_mode(d: Path) -> tuple[Path, Path]:
    """A decentralized-auth server (an operator, its system account and an account with
    JetStream, in a memory resolver) and a user's credentials file (JWT + seed), as managed
    NATS deployments issue them: the server's config and the creds file."""
    from nats_jwt.v2.operator_claims import OperatorClaims
    from nats_jwt.v2.snippets import Operator

    operator = Operator()
    operator.set_claims(OperatorClaims(operator.key_pair.public_key.decode(), "swe-fleet-test"))
    account, system = operator.create_account("council"), operator.create_account("SYS")
    account.claims.nats.limits.mem_storage = account.claims.nats.limits.disk_storage = -1
    user = account.create_user("job")
    (d / "operator.jwt").write_text(operator.jwt)
    accounts = {a.key_pair.public_key.decode(): a.jwt for a in (account, system)}
    conf = d / "operator.conf"
    conf.write_text(
        f"operator: {json.dumps(str(d / 'operator.jwt'))}\n"
        f"system_account: {system.key_pair.public_key.decode()}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {json.dumps(accounts)}\n"
        "jetstream { store_dir: $NATS_STORE_DIR }\n"
    )
    creds = d / "user.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user.jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.key_pair.seed.decode()}\n------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    return conf, creds


KINDS = ["token", "user-password", "nkey", "creds-file", "tls-ca", "mutual-tls"]


@pytest.fixture(params=KINDS)
def secured(request: pytest.FixtureRequest, tmp_path: Path, pki: dict[str, Path]) -> Iterator[Secured]:
    kind = request.param
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    env: dict[str, str]
    if kind == "token":
        args, env = ["--auth", SECRET], {"NATS_TOKEN_FILE": str(secret_file)}
    elif kind == "user-password":
        args = ["--user", "council", "--pass", SECRET]
        env = {"NATS_USER": "council", "NATS_PASSWORD_FILE": str(secret_file)}
    elif kind == "nkey":
        seed, public = _nkey(tmp_path)
        conf = tmp_path / "nkey.conf"
        conf.write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
        args, env = ["-c", str(conf)], {"NATS_NKEY": str(seed)}
    elif kind == "creds-file":
        conf, creds = _operator_mode(tmp_path)
        args, env = ["-c", str(conf)], {"NATS_CREDS": str(creds)}
    else:
        tls = ["--tls", "--tlscert", str(pki["server_cert"]), "--tlskey", str(pki["server_key"])]
        env = {"NATS_CA": str(pki["ca"])}
        if kind == "mutual-tls":
            tls = ["--tlsverify", "--tlscacert", str(pki["ca"]), *tls[1:]]
            env |= {"NATS_CERT": str(pki["client_cert"]), "NATS_KEY": str(pki["client_key"])}
        args = tls
    server = NatsServer(tmp_path / "nats", args=args).start()
    try:
        yield Secured(server, env)
    finally:
        server.stop()


def _consume(url: str, env: dict[str, str], sid: str, *flags: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    return subprocess.run(
        [
            SWE_FLEET,
            "consume",
            "--nats-url",
            url,
            "--submission-id",
            sid,
            "--json",
            "--idle-timeout",
            "3",
            *flags,
        ],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_way_in_publishes_and_reads_every_event(
    secured: Secured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job's publisher (credentials from the variables) stores 5 events; consume, with the
    same variables, reads each once; no secret in its output."""
    for key, value in secured.env.items():
        monkeypatch.setenv(key, value)
    events = propose_events("auth-sub", 5)

    async def publish() -> None:
        publisher = await JetStreamPublisher.connect(PublishSpec(nats_url=secured.server.url))
        try:
            await publisher.publish_all(events)
        finally:
            await publisher.close()

    asyncio.run(publish())
    proc = _consume(secured.server.url, secured.env, "auth-sub")
    assert proc.returncode == 0, proc.stderr[-2000:]
    keys = [json.loads(line)["key"] for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(keys) == sorted(e.key for e in events)
    assert SECRET not in proc.stdout + proc.stderr


def test_the_same_options_on_the_command_line(secured: Secured) -> None:
    """--nats-token-file, --nats-user, --nats-ca ...: the options set what the variables set."""
    flags = []
    for key, value in secured.env.items():
        flags += [f"--{key.lower().replace('_', '-')}", value]
    proc = _consume(secured.server.url, {}, "nobody", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]  # connected, nothing to read, idle exit


def test_wrong_or_missing_credentials_exit_5_at_once_naming_the_variables(tmp_path: Path) -> None:
    """A server requiring a token: none, or a wrong one, is refused in about a second (no
    reconnect loop), in one line naming the variables, exit 5, no traceback, no secret."""
    server = NatsServer(tmp_path / "nats", args=["--auth", SECRET]).start()
    try:
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-token-q7\n")
        for env in ({}, {"NATS_TOKEN_FILE": str(wrong)}):
            proc = _consume(server.url, env, "x")
            assert proc.returncode == 5, proc.stderr[-2000:]
            lines = [line for line in proc.stderr.splitlines() if "error:" in line]
            assert len(lines) == 1 and "refused the credentials" in lines[0], proc.stderr[-2000:]
            assert "NATS_TOKEN_FILE" in lines[0] and "Traceback" not in proc.stderr
            assert "not-the-token-q7" not in proc.stderr and SECRET not in proc.stderr
    finally:
        server.stop()


def test_an_untrusted_server_certificate_is_named_as_such(pki: dict[str, Path], tmp_path: Path) -> None:
    """TLS with a CA that did not sign the server's certificate: NatsRefused at once, naming
    NATS_CA; without NATS_CA (the system's CAs) the same."""
    args = ["--tls", "--tlscert", str(pki["server_cert"]), "--tlskey", str(pki["server_key"])]
    server = NatsServer(tmp_path / "nats", args=args).start()

    async def attempt(auth: NatsAuth) -> str:
        try:
            nc = await connect_nats(server.url, timeout_s=10, auth=auth)
        except NatsRefused as exc:
            return str(exc)
        await close_nats(nc)
        return "connected"

    try:
        for auth in (NatsAuth(ca_file=pki["other_ca"]), NatsAuth(), NatsAuth(ca_file=pki["ca"])):
            said = asyncio.run(attempt(auth))
            if auth.ca_file == pki["ca"]:
                assert said == "connected"
            else:
                assert "is not trusted" in said and "NATS_CA" in said, said
    finally:
        server.stop()
