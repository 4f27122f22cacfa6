"""How a NATS client proves who it is and encrypts the link: the NATS CLI's variables.

Every client of ours (the job's publisher and checkpoints, ``consume``, ``dispatch``,
``request_council``, ``doctor``, ``outbox replay``) connects through
:func:`swe_fleet.nats.connection.connect_nats`, which reads these from its environment:

============================  ================================================================
``NATS_USER``                 user name (with ``NATS_PASSWORD`` or ``NATS_PASSWORD_FILE``)
``NATS_PASSWORD``             its password (a value: for a laptop's shell)
``NATS_PASSWORD_FILE``        a file holding the password (by reference: nodes, CI)
``NATS_TOKEN``                an authorization token (a value)
``NATS_TOKEN_FILE``           a file holding the token (by reference)
``NATS_NKEY``                 a file holding an NKey seed (``SU...``; needs the ``nkeys`` package)
``NATS_CREDS``                a credentials file (user JWT + NKey seed, as managed NATS issues)
``NATS_CA``                   CA bundle that signed the server's certificate (turns TLS on)
``NATS_CERT``, ``NATS_KEY``   client certificate and key for mutual TLS (turn TLS on)
``NATS_INBOX_PREFIX``         the prefix of this client's reply inboxes (default ``_INBOX``):
                              the permission model gives each role its own (``_INBOX_JOB`` ...)
============================  ================================================================

A ``tls://`` URL turns TLS on with the system's CAs. At most one way of authenticating may be
set. Secrets travel by reference: a job reads them on its node (variables set by the node's
image, compose secret or Kubernetes Secret mount), never from its spec, entrypoint or
runtime_env, and a NATS URL with credentials in it is refused (:func:`refuse_credentials_in_url`).
:meth:`NatsAuth.describe` says what a client used without saying any secret.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swe_fleet.errors import ConfigError
from swe_fleet.spec import CREDENTIALS_IN_URL, credentials_in_url

#: The variables this module reads (the NATS CLI's, and ``_FILE`` references for secrets).
NATS_AUTH_ENV = (
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_PASSWORD_FILE",
    "NATS_TOKEN",
    "NATS_TOKEN_FILE",
    "NATS_NKEY",
    "NATS_CREDS",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_INBOX_PREFIX",
)


def _read_secret(env: Mapping[str, str], value_var: str, file_var: str) -> str | None:
    value, path = env.get(value_var, "").strip(), env.get(file_var, "").strip()
    if value and path:
        raise ConfigError(f"both {value_var} and {file_var} are set; set one of them", setting=value_var)
    if not path:
        return value or None
    try:
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{file_var}={path} cannot be read ({exc.strerror or exc}); point it at the mounted secret",
            setting=file_var,
        ) from None
    if not secret:
        raise ConfigError(f"{file_var}={path} is empty", setting=file_var)
    return secret


def _nkey_seed(env: Mapping[str, str]) -> Path | None:
    """``NATS_NKEY``: a file holding a user seed the nkeys library accepts."""
    path = _existing_file(env, "NATS_NKEY")
    if path is None:
        return None
    try:
        import nkeys  # type: ignore[import-untyped]

        nkeys.from_seed(bytearray(path.read_bytes().strip()))
    except ImportError:
        raise ConfigError(
            "NATS_NKEY needs the nkeys package (pip install nkeys)", setting="NATS_NKEY"
        ) from None
    except Exception as exc:  # the library's own errors (ErrInvalidSeed, ...) and unreadable files
        raise ConfigError(
            f"NATS_NKEY={path} does not hold an NKey seed ({type(exc).__name__})", setting="NATS_NKEY"
        ) from None
    return path


def _creds_file(env: Mapping[str, str]) -> Path | None:
    """``NATS_CREDS``: a credentials file with its JWT and seed sections (nats-py loops forever
    on a file without them)."""
    path = _existing_file(env, "NATS_CREDS")
    if path is None:
        return None
    text = path.read_text(errors="replace")
    for marker in ("BEGIN NATS USER JWT", "BEGIN USER NKEY SEED"):
        if marker not in text:
            raise ConfigError(
                f"NATS_CREDS={path} is not a NATS credentials file (no '{marker}' section)",
                setting="NATS_CREDS",
            )
    return path


def _existing_file(env: Mapping[str, str], var: str) -> Path | None:
    raw = env.get(var, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(f"{var}={raw} is not a readable file", setting=var)
    return path


@dataclass(frozen=True, repr=False)
class NatsAuth:
    """One client's credentials and TLS settings (``repr`` and :meth:`describe` hide secrets)."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: Path | None = None
    creds_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    inbox_prefix: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NatsAuth:
        """Read the variables of the module docstring (default: this process's environment).

        Raises:
            ConfigError: a file that cannot be read, two ways of authenticating, a password
                without a user, a certificate without its key (the variable is named).
        """
        env = os.environ if env is None else env
        auth = cls(
            user=env.get("NATS_USER", "").strip() or None,
            password=_read_secret(env, "NATS_PASSWORD", "NATS_PASSWORD_FILE"),
            token=_read_secret(env, "NATS_TOKEN", "NATS_TOKEN_FILE"),
            nkey_seed_file=_nkey_seed(env),
            creds_file=_creds_file(env),
            ca_file=_existing_file(env, "NATS_CA"),
            cert_file=_existing_file(env, "NATS_CERT"),
            key_file=_existing_file(env, "NATS_KEY"),
            inbox_prefix=_inbox_prefix(env),
        )
        auth._check()
        return auth

    def _check(self) -> None:
        ways = [
            name
            for name, on in (
                ("NATS_USER", self.user is not None),
                ("NATS_TOKEN", self.token is not None),
                ("NATS_NKEY", self.nkey_seed_file is not None),
                ("NATS_CREDS", self.creds_file is not None),
            )
            if on
        ]
        if len(ways) > 1:
            raise ConfigError(
                f"{' and '.join(ways)} are both set: use one way to authenticate", setting=ways[1]
            )
        if self.password is not None and self.user is None:
            raise ConfigError("NATS_PASSWORD is set without NATS_USER", setting="NATS_USER")
        if self.user is not None and self.password is None:
            raise ConfigError(
                "NATS_USER is set without NATS_PASSWORD (or NATS_PASSWORD_FILE)", setting="NATS_PASSWORD"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("NATS_CERT and NATS_KEY go together (mutual TLS)", setting="NATS_KEY")

    @property
    def tls(self) -> bool:
        """TLS settings of our own (a ``tls://`` URL turns TLS on as well)."""
        return any(p is not None for p in (self.ca_file, self.cert_file))

    def ssl_context(self, url: str) -> ssl.SSLContext | None:
        """The client's TLS context: None without TLS (neither settings nor a ``tls://`` URL)."""
        if not self.tls and not url.startswith("tls://"):
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def connect_options(self, url: str) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect`` for these settings."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options.update(user=self.user, password=self.password)
        if self.token is not None:
            options["token"] = self.token
        if self.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.nkey_seed_file)
        if self.creds_file is not None:
            options["user_credentials"] = str(self.creds_file)
        if self.inbox_prefix is not None:
            options["inbox_prefix"] = self.inbox_prefix
        context = self.ssl_context(url)
        if context is not None:
            options["tls"] = context
        return options

    def describe(self, url: str = "") -> str:
        """What this client uses, without any secret (``token, TLS with CA /ca.pem``)."""
        if self.user is not None:
            how = f"user {self.user} with a password"
        elif self.token is not None:
            how = "a token"
        elif self.nkey_seed_file is not None:
            how = f"the NKey seed in {self.nkey_seed_file}"
        elif self.creds_file is not None:
            how = f"the credentials file {self.creds_file}"
        else:
            how = "no credentials"
        if self.ssl_context(url) is None:
            return f"{how}, no TLS"
        ca = f"CA {self.ca_file}" if self.ca_file else "the system's CAs"
        mutual = f", client certificate {self.cert_file}" if self.cert_file else ""
        return f"{how}, TLS ({ca}{mutual})"

    def __repr__(self) -> str:
        return f"NatsAuth({self.describe()})"


def _inbox_prefix(env: Mapping[str, str]) -> str | None:
    """``NATS_INBOX_PREFIX``: one subject token or more, no wildcard (``_INBOX_JOB``)."""
    prefix = env.get("NATS_INBOX_PREFIX", "").strip()
    if not prefix:
        return None
    if any(c in prefix for c in " *>") or prefix.startswith(".") or prefix.endswith("."):
        raise ConfigError(
            f"NATS_INBOX_PREFIX={prefix!r} is not a subject prefix: use tokens like _INBOX_JOB "
            "(no spaces, no wildcards)",
            setting="NATS_INBOX_PREFIX",
        )
    return prefix


def refuse_credentials_in_url(url: str, *, setting: str = "the NATS URL") -> str:
    """``url`` unchanged, or a :class:`ConfigError` when it carries credentials (``user:pass@``,
    ``token@``): a URL travels into specs, entrypoints and logs, so secrets never go in it."""
    if credentials_in_url(url):
        raise ConfigError(f"{setting} {CREDENTIALS_IN_URL}", setting=setting)
    return url
