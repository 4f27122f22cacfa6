"""``swe-fleet nats keys``: the NKeys of the NATS permission model."""

from __future__ import annotations

from pathlib import Path

import click

from swe_fleet.cli._common import err, guard, out
from swe_fleet.exit_codes import ExitCode


@click.group("nats")
def nats_group() -> None:
    """NATS for swe-fleet: the permission model's keys (docs/security.md)."""


@nats_group.command("keys")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def nats_keys(directory: Path) -> None:
    """Make one NKey per role (producer, dispatcher, job, consumer) in DIRECTORY.

    Writes each role's seed to DIRECTORY/ROLE.nk (mode 0600; point that role's NATS_NKEY at it)
    and the public keys to DIRECTORY/nats-server.env (the variables images/nats/nats-server.conf
    reads); prints each role's NATS_NKEY and NATS_INBOX_PREFIX (_INBOX_ROLE). Never overwrites a
    key. Exit 3 when a file exists.
    """
    from swe_fleet.nats.keys import SERVER_ENV_FILE, inbox_prefix, make_role_keys, seed_file

    def body() -> int:
        publics = make_role_keys(directory)
        for role, public in publics.items():
            out.print(
                f"{role}: {public}  NATS_NKEY={seed_file(directory, role)} "
                f"NATS_INBOX_PREFIX={inbox_prefix(role)}",
                markup=False,
            )
        err.print(f"the server's variables: {directory / SERVER_ENV_FILE}", markup=False)
        return int(ExitCode.OK)

    guard(body)
