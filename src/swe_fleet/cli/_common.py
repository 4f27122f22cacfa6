"""What every command shares: the consoles, the error-to-exit-code mapping, shared options.

Logs go to stderr; stdout carries results (``--json`` lines, ids) for scripts. Every option's
default comes from the library's own constant, so ``--help`` and the code cannot disagree.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
from rich.console import Console

from swe_fleet._processes import StopSignal
from swe_fleet.errors import (
    AddressError,
    ConfigError,
    DashboardUnauthorized,
    DashboardUnreachable,
    JobWaitTimeout,
    LocalStackError,
    ModelError,
    NatsUnreachable,
    NodeConfigError,
    NoHeadFound,
    OutboxError,
    PreflightFailed,
    ResultNotFound,
    SpecError,
    StreamConfigMismatch,
    SubmissionConflict,
    SweFleetError,
)
from swe_fleet.events import AGENT_RESPONSES_STREAM
from swe_fleet.exit_codes import ExitCode
from swe_fleet.preflight import DEFAULT_PREFLIGHT_TIMEOUT_S
from swe_fleet.spec import CouncilSpec, PublishSpec
from swe_fleet.submit import RUNTIME_ENV_KINDS

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

#: Errors that are the caller's input, not the cluster's state.
_BAD_INPUT = (
    SpecError,
    AddressError,
    ConfigError,
    SubmissionConflict,
    StreamConfigMismatch,
    OutboxError,
    NodeConfigError,
    ResultNotFound,
)


def exit_code_for(exc: SweFleetError) -> ExitCode:
    """The exit code a swe-fleet error ends a command with (see :mod:`swe_fleet.exit_codes`)."""
    if isinstance(exc, _BAD_INPUT):
        return ExitCode.BAD_INPUT
    if isinstance(exc, DashboardUnreachable | DashboardUnauthorized | NatsUnreachable | NoHeadFound):
        return ExitCode.UNREACHABLE
    if isinstance(exc, JobWaitTimeout):
        return ExitCode.TIMEOUT
    if isinstance(exc, LocalStackError | ModelError):
        return ExitCode.LOCAL_STACK
    if isinstance(exc, PreflightFailed):
        return ExitCode.PREFLIGHT_FAILED
    return ExitCode.JOB_FAILED


def fail(code: ExitCode, message: str) -> NoReturn:
    """Print one error line and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", markup=True)
    sys.exit(int(code))


#: The exit code of a command that a stop signal ended (see :func:`swe_fleet._processes.stop_on_signals`).
_SIGNAL_EXIT = {
    signal.SIGINT: ExitCode.INTERRUPTED,
    signal.SIGTERM: ExitCode.TERMINATED,
    signal.SIGHUP: ExitCode.HANGUP,
}


def guard(fn: Callable[[], int]) -> NoReturn:
    """Run a command body; map swe-fleet errors to exit codes with one clear line."""
    try:
        code = fn()
    except SweFleetError as exc:
        fail(exit_code_for(exc), str(exc))
    except StopSignal as stop:
        err.print(f"stopped by {signal.Signals(stop.signum).name}")
        sys.exit(int(_SIGNAL_EXIT.get(signal.Signals(stop.signum), ExitCode.INTERRUPTED)))
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    sys.exit(code)


def load_spec(path: str) -> CouncilSpec:
    """Read and validate a spec file (raises :class:`~swe_fleet.errors.SpecError`)."""
    return CouncilSpec.from_file(Path(path))


def check_budget(spec: CouncilSpec, spec_path: str) -> None:
    """Refuse a spec whose requests cannot fit the model's context (SpecError naming the field:
    exit 3); say what was checked."""
    from swe_fleet.council.budget import check_token_budget
    from swe_fleet.llm.limits import model_limits

    info(check_token_budget(spec, model_limits(spec), source=spec_path))


def check_local_model(spec: CouncilSpec, spec_path: str) -> None:
    """On this host's own stack (``run``) the client is the node: a model that cannot load here
    without a download is refused before anything starts (SpecError on ``model.name``: exit 3)."""
    from swe_fleet.preflight.node_check import FAIL, check_model

    if spec.backend != "engine":
        return
    row = check_model(spec.model.name)
    if row.status == FAIL:
        raise SpecError(f"{row.detail}; {row.fix}", source=spec_path, field="model.name")


def info(message: str) -> None:
    """A progress line on stderr (no markup: messages quote URLs and brackets)."""
    err.print(message, markup=False)


#: Defaults from the library's own constants.
DEFAULT_NATS_URL = PublishSpec().nats_url
DEFAULT_JOB_TIMEOUT_S = 1800.0

SPEC_ARGUMENT = click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))

ENV_OPTION = click.option(
    "--env",
    "env_kind",
    type=click.Choice(list(RUNTIME_ENV_KINDS)),
    default=RUNTIME_ENV_KINDS[0],
    show_default=True,
    help="runtime env: pip pins (runtime_envs/pinned.yaml) or the baked image's",
)
NATS_URL_OPTION = click.option(
    "--nats-url", default=DEFAULT_NATS_URL, show_default=True, envvar="NATS_URL",
    help="NATS server (env NATS_URL)",
)  # fmt: skip
#: The NATS credentials and TLS options (secrets by file only: a value on a command line is
#: visible to every user of the machine). Each sets the NATS CLI's variable for this process,
#: which every NATS client of the command reads (:mod:`swe_fleet.nats.auth`).
_NATS_AUTH = (
    ("--nats-user", "NATS_USER", "NATS user (with --nats-password-file)"),
    ("--nats-password-file", "NATS_PASSWORD_FILE", "file holding the NATS password"),
    ("--nats-token-file", "NATS_TOKEN_FILE", "file holding the NATS token"),
    ("--nats-nkey", "NATS_NKEY", "NKey seed file"),
    ("--nats-creds", "NATS_CREDS", "NATS credentials file (JWT + seed)"),
    ("--nats-ca", "NATS_CA", "CA bundle of the NATS server's certificate (turns TLS on)"),
    ("--nats-cert", "NATS_CERT", "client certificate for mutual TLS"),
    ("--nats-key", "NATS_KEY", "client key for mutual TLS"),
    ("--nats-inbox-prefix", "NATS_INBOX_PREFIX", "prefix of this client's reply inboxes (its NATS role's)"),
)


def _set_env(var: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            os.environ[var] = value

    return callback


def nats_auth_options(command: Callable[..., object]) -> Callable[..., object]:
    """The ``--nats-*`` credential and TLS options (env: the NATS CLI's variables)."""
    for flag, var, what in reversed(_NATS_AUTH):
        metavar = {"NATS_USER": "USER", "NATS_INBOX_PREFIX": "PREFIX"}.get(var, "PATH")
        option = click.option(
            flag, callback=_set_env(var), expose_value=False, metavar=metavar, help=f"{what} (env {var})"
        )
        command = option(command)
    return command


STREAM_OPTION = click.option("--stream", default=AGENT_RESPONSES_STREAM, show_default=True)
TIMEOUT_OPTION = click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=DEFAULT_JOB_TIMEOUT_S,
    show_default=True,
    help="seconds to wait for the job",
)
ADDRESS_OPTION = click.option(
    "--address", default=None, help="Jobs API URL http://HEAD:8265 (default: from RAY_ADDRESS / RAY_HOST)"
)
#: Where this client reaches NATS when the cluster reaches it elsewhere (compose: the host uses the
#: published tls://127.0.0.1:4222, the nodes the service name tls://nats:4222).
CLIENT_NATS_URL_OPTION = click.option(
    "--client-nats-url",
    default=None,
    envvar="SWE_FLEET_CLIENT_NATS_URL",
    help="where this client reaches NATS, when not at the cluster's URL (e.g. tls://127.0.0.1:4222 on a "
    "compose host whose nodes use tls://nats:4222) (env SWE_FLEET_CLIENT_NATS_URL; default: the cluster's)",
)


PREFLIGHT_TIMEOUT_OPTION = click.option(
    "--preflight-timeout",
    type=float,
    default=DEFAULT_PREFLIGHT_TIMEOUT_S,
    show_default=True,
    help="seconds for the preflight job (runtime_env set-up on every node included)",
)
