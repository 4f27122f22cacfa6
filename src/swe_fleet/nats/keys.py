"""The NKeys of the NATS permission model: one user per role (docs/security.md).

``images/nats/nats-server.conf`` knows each role by the public half of its NKey, read from the
server's environment (``SWE_FLEET_<ROLE>_NKEY``); the seed, the secret half, stays with that
role's clients, where ``NATS_NKEY`` points. :func:`make_role_keys` makes all four at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from swe_fleet.errors import ConfigError

#: The roles of the permission model, in the order the server config lists them.
ROLES = ("producer", "dispatcher", "job", "consumer")
#: The file of public keys for the server (``KEY=value`` lines: a compose ``env_file``).
SERVER_ENV_FILE = "nats-server.env"


def server_variable(role: str) -> str:
    """The server's variable holding ``role``'s public key."""
    return f"SWE_FLEET_{role.upper()}_NKEY"


def inbox_prefix(role: str) -> str:
    """The inbox prefix of ``role``'s clients (``NATS_INBOX_PREFIX``): the only inboxes the
    server config lets that role subscribe to."""
    return f"_INBOX_{role.upper()}"


def seed_file(directory: Path, role: str) -> Path:
    """Where :func:`make_role_keys` puts ``role``'s seed."""
    return directory / f"{role}.nk"


def make_role_keys(directory: Path) -> dict[str, str]:
    """Write a new user NKey per role into ``directory`` and return ``{role: public key}``.

    Each seed goes to ``<role>.nk`` (mode 0600, for ``NATS_NKEY``); the public keys go to
    ``nats-server.env`` (``SWE_FLEET_<ROLE>_NKEY=U...``, for the server).

    Raises:
        ConfigError: a file it would write exists (keys are never overwritten).
    """
    import nacl.signing
    import nkeys  # type: ignore[import-untyped]

    directory.mkdir(parents=True, exist_ok=True)
    targets = [seed_file(directory, r) for r in ROLES] + [directory / SERVER_ENV_FILE]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise ConfigError(
            f"{', '.join(existing)} exist: keys are never overwritten; remove them or choose "
            "another directory",
            setting="directory",
        )
    publics: dict[str, str] = {}
    for role in ROLES:
        seed = nkeys.encode_seed(nacl.signing.SigningKey.generate().encode(), nkeys.PREFIX_BYTE_USER)
        publics[role] = nkeys.from_seed(bytearray(seed)).public_key.decode()
        path = seed_file(directory, role)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
    (directory / SERVER_ENV_FILE).write_text("".join(f"{server_variable(r)}={publics[r]}\n" for r in ROLES))
    return publics
