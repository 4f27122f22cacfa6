"""``swe-fleet consume``: council events from a durable JetStream consumer."""

from __future__ import annotations

import asyncio

import click

from swe_fleet.cli._common import NATS_URL_OPTION, STREAM_OPTION, guard, nats_auth_options
from swe_fleet.cli.render import print_event
from swe_fleet.exit_codes import ExitCode

#: The shared durable consumer of ``swe-fleet consume``.
DEFAULT_DURABLE = "swe-fleet-consume"


def durable_for(submission_id: str | None) -> str:
    """The default durable: the shared one, or one per submission when filtering.

    A filtered consumer acks (skips) other submissions' events: it gets a durable of its own so
    that it never consumes them away from the shared one. Durable names allow ``[A-Za-z0-9_-]``.
    """
    if not submission_id:
        return DEFAULT_DURABLE
    return f"{DEFAULT_DURABLE}-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in submission_id)


@click.command()
@nats_auth_options
@NATS_URL_OPTION
@STREAM_OPTION
@click.option(
    "--durable",
    default=None,
    help=f"durable consumer name; resumes where it last acked "
    f"[default: {DEFAULT_DURABLE}, or {DEFAULT_DURABLE}-ID with --submission-id]",
)
@click.option("--submission-id", default=None, help="only events of this submission")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of human-readable lines")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="exit 0 after this many seconds without a message (default: run until Ctrl-C)",
)
@click.option("--max", "max_events", type=int, default=None, help="exit 0 after this many events")
def consume(
    nats_url: str,
    stream: str,
    durable: str | None,
    submission_id: str | None,
    as_json: bool,
    idle_timeout: float | None,
    max_events: int | None,
) -> None:
    """Print council events from a durable JetStream pull consumer (acked after printing)."""
    from swe_fleet.nats.consumer import ConsumerOptions, iter_events

    async def main() -> int:
        opts = ConsumerOptions(
            nats_url=nats_url,
            stream=stream,
            durable=durable or durable_for(submission_id),
            idle_timeout_s=idle_timeout,
            submission_id=submission_id,
            max_events=max_events,
        )
        async for event in iter_events(opts):
            print_event(event, as_json=as_json)
        return int(ExitCode.OK)

    guard(lambda: asyncio.run(main()))
