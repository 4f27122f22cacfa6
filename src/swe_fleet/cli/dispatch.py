"""``swe-fleet dispatch``: council.request events become council jobs, exactly once."""

from __future__ import annotations

from pathlib import Path

import click

from swe_fleet._logging import configure_logging
from swe_fleet.cli._common import ADDRESS_OPTION, ENV_OPTION, NATS_URL_OPTION, guard, nats_auth_options
from swe_fleet.dispatch.config import DEFAULT_DURABLE, DispatcherConfig
from swe_fleet.events import AGENT_RESPONSES_STREAM
from swe_fleet.exit_codes import ExitCode

#: The defaults of every option below are DispatcherConfig's own.
_DEFAULTS = DispatcherConfig(nats_url="", dashboard_url="")


@click.command()
@nats_auth_options
@NATS_URL_OPTION
@ADDRESS_OPTION
@click.option(
    "--job-nats-url",
    default=None,
    help="NATS URL the jobs publish to, as seen from the cluster [default: --nats-url]",
)
@ENV_OPTION
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_in_flight,
    show_default=True,
    help="jobs not yet finished at once; further requests wait in the stream",
)
@click.option(
    "--stream",
    default=AGENT_RESPONSES_STREAM,
    show_default=True,
    help="stream of the jobs' events, where the status events go too",
)
@click.option("--durable", default=DEFAULT_DURABLE, show_default=True, help="durable request consumer")
@click.option(
    "--spec-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="where requests' spec_ref files live (default: requests must carry their spec)",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.poll_s,
    show_default=True,
    help="seconds between job status reads",
)
@click.option(
    "--ack-wait",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.ack_wait_s,
    show_default=True,
    help="seconds before a request held by a crashed dispatcher is delivered again "
    "(set when the durable is created)",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_attempts,
    show_default=True,
    help="deliveries of one request before it is dead-lettered",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.request_timeout_s,
    show_default=True,
    help="seconds for each Jobs API request (a job submission waits at least 60)",
)
@click.option("--json-logs", is_flag=True, help="log JSON lines (for log collectors) instead of console text")
def dispatch(
    nats_url: str,
    address: str | None,
    job_nats_url: str | None,
    env_kind: str,
    max_in_flight: int,
    stream: str,
    durable: str,
    spec_dir: str | None,
    poll: float,
    ack_wait: float,
    max_attempts: int,
    request_timeout: float,
    json_logs: bool,
) -> None:
    """Turn council.request events into council jobs, exactly once, and publish each job's
    council.job.submitted, running and succeeded | failed | stopped, once per state.

    Bad requests go to council.request.dead with the payload and the reason. Runs until SIGTERM
    (exit 0; the submission under way is finished and acked first) or Ctrl-C (exit 130).
    Exit 5 when the Jobs API or NATS cannot be reached, 3 when a stream's config is unfit.
    """
    import signal

    from swe_fleet.addresses import auth_token_from_env, client_jobs_api_url
    from swe_fleet.dispatch.service import run_dispatcher

    if json_logs:
        configure_logging(json=True)

    def body() -> int:
        config = DispatcherConfig(
            nats_url=nats_url,
            dashboard_url=address or client_jobs_api_url(),
            auth_token=auth_token_from_env(),
            job_nats_url=job_nats_url,
            env_kind=env_kind,
            events_stream=stream,
            durable=durable,
            max_in_flight=max_in_flight,
            poll_s=poll,
            ack_wait_s=ack_wait,
            max_attempts=max_attempts,
            spec_dir=Path(spec_dir) if spec_dir else None,
            request_timeout_s=request_timeout,
        )
        received = run_dispatcher(config)
        return int(ExitCode.INTERRUPTED if received == signal.SIGINT else ExitCode.OK)

    guard(body)
