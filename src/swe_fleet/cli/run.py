"""``swe-fleet run``: a council on the embedded local stack."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import click

from swe_fleet.cli._common import (
    SPEC_ARGUMENT,
    TIMEOUT_OPTION,
    check_budget,
    check_local_model,
    guard,
    info,
    load_spec,
    out,
)
from swe_fleet.cli.render import print_event, print_rankings
from swe_fleet.cli.report import REPORT_FILE, write_report
from swe_fleet.cli.watch import live_council
from swe_fleet.errors import SweFleetError
from swe_fleet.exit_codes import for_job_status
from swe_fleet.local import LOCAL_ENV_KIND
from swe_fleet.report.progress import CouncilProgress
from swe_fleet.submit import RUNTIME_ENV_KINDS

if TYPE_CHECKING:
    from swe_fleet.submit.jobs_api import JobsApi
    from swe_fleet.submit.request import SubmittedJob


@click.command()
@SPEC_ARGUMENT
@click.option(
    "--env",
    "env_kind",
    type=click.Choice(list(RUNTIME_ENV_KINDS)),
    default=LOCAL_ENV_KIND,
    show_default=True,
    help="runtime env: the local node runs from this Python, which has every pin (image: "
    "nothing to install); pinned makes Ray copy this virtualenv to pip-install the pins into it",
)
@TIMEOUT_OPTION
@click.option("--json", "as_json", is_flag=True, help="print events as JSON lines")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="keep the stack's logs here (default: a temp dir, removed at the end)",
)
@click.option(
    "--html", "html_path", type=REPORT_FILE, help="write the council's HTML report here (swe-fleet report)"
)
@click.option("--md", "md_path", type=REPORT_FILE, help="write the council's Markdown report here")
def run(
    spec_path: str,
    env_kind: str,
    timeout_s: float,
    as_json: bool,
    workdir: str | None,
    html_path: Path | None,
    md_path: Path | None,
) -> None:
    """Run a council on the embedded local stack (nats-server, Ray head, vLLM on CPU).

    Starts the stack, prepares the model, submits through the Jobs API exactly as to a remote
    cluster, shows events as they arrive, prints the ranking per task, and tears everything
    down (also on Ctrl-C, SIGTERM or SIGHUP, when the job is stopped first). In a terminal the
    events are a live grid of tasks x phases (as swe-fleet watch draws it). With --html or
    --md, the council's report is written before the stack goes, and its path is the last line.
    """
    from swe_fleet._processes import stop_on_signals
    from swe_fleet.local.run import run_locally

    def say_why(jobs: JobsApi, submitted: SubmittedJob, status: str, nats_url: str) -> None:
        from swe_fleet.cli.outcome import failure_lines

        rerun = "fix the cause and run it again (the local stack keeps no checkpoint to resume from)"
        for line in failure_lines(
            jobs, status=status, submission_id=submitted.submission_id, job_id=submitted.job_id,
            nats_url=nats_url, rerun=rerun,
        ):  # fmt: skip
            info(line)

    written: list[Path] = []

    def body() -> int:
        spec = load_spec(spec_path)

        def write_reports(nats_url: str, submission_id: str) -> None:
            if html_path is None and md_path is None:
                return
            try:
                report = write_report(
                    nats_url, submission_id, spec.publish.stream, html=html_path, md=md_path
                )
                written.extend(asyncio.run(report))
            except SweFleetError as exc:
                info(f"the report was not written: {exc}")

        check_budget(spec, spec_path)  # before any process starts: exit 3
        check_local_model(spec, spec_path)
        # In a terminal the council is a live grid (swe-fleet watch); elsewhere one line per event.
        live = out.is_terminal and not as_json
        progress = CouncilProgress(spec.model_dump(mode="json"))
        view = live_council(progress, f"council {spec.name}") if live else contextlib.nullcontext()
        with stop_on_signals(), view:
            status = run_locally(
                spec,
                env_kind=env_kind,
                timeout_s=timeout_s,
                workdir=Path(workdir) if workdir else None,
                on_event=progress.apply if live else lambda e: print_event(e, as_json=as_json),
                on_info=info,
                on_results=(lambda r: None) if as_json else print_rankings,
                on_failure=say_why,
                on_finished=write_reports,
            )
        for path in written:
            out.print(f"report: {path}", markup=False)
        return int(for_job_status(status))

    guard(body)
