"""``swe-fleet outbox replay``: publish what a job could not get acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from swe_fleet.cli._common import NATS_URL_OPTION, STREAM_OPTION, err, guard, nats_auth_options, out
from swe_fleet.exit_codes import ExitCode
from swe_fleet.spec import PublishSpec

_PUBLISH = PublishSpec()


@click.group()
def outbox() -> None:
    """Events a publisher could not get acknowledged, spooled on disk (JSONL), and their replay."""


@outbox.command("replay")
@nats_auth_options
@click.argument("path", type=click.Path(dir_okay=False))
@NATS_URL_OPTION
@STREAM_OPTION
@click.option("--keep", is_flag=True, help="keep the file after every event was acknowledged")
@click.option(
    "--retry-budget",
    type=float,
    default=_PUBLISH.retry_budget_s,
    show_default=True,
    help="seconds of retrying one event before giving up (the file is then left as it is)",
)
@click.option(
    "--connect-timeout",
    type=float,
    default=_PUBLISH.connect_timeout_s,
    show_default=True,
    help="seconds to reach NATS",
)
def outbox_replay(
    path: str, nats_url: str, stream: str, keep: bool, retry_budget: float, connect_timeout: float
) -> None:
    """Publish every event of the outbox PATH, keyed, so events already stored count as duplicates.

    Removes PATH when every event was acknowledged. Exit 0 done, 3 unreadable or corrupt outbox
    (the line is named; nothing published), 5 NATS unreachable (PATH unchanged), 1 an event was
    refused for good (e.g. no stream takes its subject; PATH unchanged).
    """
    from swe_fleet.nats.replay import replay_outbox

    def body() -> int:
        result = asyncio.run(
            replay_outbox(
                Path(path),
                nats_url,
                stream=stream,
                retry_budget_s=retry_budget,
                connect_timeout_s=connect_timeout,
                remove_when_done=not keep,
            )
        )
        out.print(f"published={result.published} duplicates={result.duplicates}", markup=False)
        err.print(f"{path}: {'removed' if result.removed else 'kept'}", markup=False)
        return int(ExitCode.OK)

    guard(body)
