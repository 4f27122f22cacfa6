"""``swe-fleet result`` and ``swe-fleet report``: a finished council for a reader who comes late.

``result`` reads the results store (one key-value get: the council's outcome at once); ``report``
reads the council's events back from the stream (and its spec from the results store) and
writes its transcript as one self-contained HTML file and/or Markdown.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from swe_fleet.cli._common import NATS_URL_OPTION, STREAM_OPTION, guard, nats_auth_options, out
from swe_fleet.cli.render import print_rankings
from swe_fleet.errors import NatsUnreachable, ResultNotFound
from swe_fleet.exit_codes import ExitCode

if TYPE_CHECKING:
    from swe_fleet.nats.results import CouncilRecord

#: Where a report goes (``report``, ``run``).
REPORT_FILE = click.Path(dir_okay=False, path_type=Path)
#: Bound of reading a council's events back from the stream (``report``).
DEFAULT_READ_TIMEOUT_S = 60.0


def _not_found(submission_id: str, what: str) -> ResultNotFound:
    return ResultNotFound(
        f"no {what} for submission {submission_id}: it has not finished, the id is not a submission "
        "id (a dispatched request's is dispatch-<request_id>), or its entry expired "
        f"(publish.results_ttl_s); read its events with swe-fleet consume --submission-id {submission_id}",
        submission_id=submission_id,
    )


async def read_record(nats_url: str, submission_id: str) -> CouncilRecord | None:
    """The results store's record of ``submission_id`` (None: none stored, or no bucket yet)."""
    from swe_fleet.nats.connection import open_jetstream
    from swe_fleet.nats.results import ResultsStore

    conn = await open_jetstream(nats_url, name="swe-fleet-result")
    try:
        async with conn.setting_up():
            return await ResultsStore.lookup(conn.js, submission_id)
    finally:
        await conn.close()


@click.command()
@click.argument("submission_id")
@nats_auth_options
@NATS_URL_OPTION
@click.option("--json", "as_json", is_flag=True, help="the stored record as JSON (results, spec, stored_at)")
def result(submission_id: str, nats_url: str, as_json: bool) -> None:
    """Print the stored result of a finished council: one ranking per task (exit 3 when none is stored)."""

    def body() -> int:
        record = asyncio.run(read_record(nats_url, submission_id))
        if record is None:
            raise _not_found(submission_id, "stored result")
        if not record.complete:
            raise ResultNotFound(
                f"council {submission_id} has not finished: it started at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.stored_at))}; follow it with "
                f"swe-fleet watch {submission_id}",
                submission_id=submission_id,
            )
        if as_json:
            out.print(
                json.dumps(record.model_dump(mode="json"), ensure_ascii=False), markup=False, soft_wrap=True
            )
        else:
            print_rankings(record.results)
        return int(ExitCode.OK)

    guard(body)


@click.command()
@click.argument("submission_id")
@nats_auth_options
@NATS_URL_OPTION
@STREAM_OPTION
@click.option("--html", "html_path", type=REPORT_FILE, help="write the HTML report here")
@click.option("--md", "md_path", type=REPORT_FILE, help="write the Markdown report here")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=DEFAULT_READ_TIMEOUT_S,
    show_default=True,
    help="bound on reading the events back, seconds",
)
def report(
    submission_id: str,
    nats_url: str,
    stream: str,
    html_path: Path | None,
    md_path: Path | None,
    timeout_s: float,
) -> None:
    """Write a council's transcript: every proposal, critique (and to whom each section went),
    revision, vote, the score heatmap, the outcome and the timings, from its events."""
    if html_path is None and md_path is None:
        raise click.UsageError("give --html FILE, --md FILE or both")

    def body() -> int:
        written = asyncio.run(
            write_report(nats_url, submission_id, stream, html=html_path, md=md_path, timeout_s=timeout_s)
        )
        for path in written:
            out.print(str(path), markup=False)
        return int(ExitCode.OK)

    guard(body)


async def write_report(
    nats_url: str,
    submission_id: str,
    stream: str,
    *,
    html: Path | None = None,
    md: Path | None = None,
    timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> list[Path]:
    """Read the council back and write its report(s); the paths written.

    Raises:
        ResultNotFound: the stream holds no event of the submission and the store no result.
        NatsUnreachable: NATS did not answer, or the stream was not read within ``timeout_s``.
    """
    from swe_fleet.nats.connection import open_jetstream
    from swe_fleet.nats.history import submission_events
    from swe_fleet.nats.results import ResultsStore
    from swe_fleet.report.html import render_html
    from swe_fleet.report.markdown import render_markdown
    from swe_fleet.report.transcript import build_transcript

    conn = await open_jetstream(nats_url, name="swe-fleet-report")
    try:
        async with conn.setting_up():
            record = await ResultsStore.lookup(conn.js, submission_id)
        try:
            events = await submission_events(conn.js, stream, submission_id, timeout_s=timeout_s)
        except TimeoutError:
            raise NatsUnreachable(
                f"the events of {submission_id} were not read from stream {stream} within {timeout_s:.0f} s "
                "(--timeout)",
                url=nats_url,
            ) from None
    finally:
        await conn.close()
    if not events and record is None:
        raise _not_found(submission_id, "event and no stored result")
    transcript = build_transcript(submission_id, events, record.spec if record else None)
    written = []
    for path, render in ((html, render_html), (md, render_markdown)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(transcript), encoding="utf-8")
            written.append(path)
    return written
