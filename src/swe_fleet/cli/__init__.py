"""``swe-fleet``: run, submit, doctor, consume, watch, result, report, dispatch, engine, outbox
replay, model prepare, local up, node start, nats keys. One module per command group; exit codes are
:mod:`swe_fleet.exit_codes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from swe_fleet import __version__
from swe_fleet._logging import configure_logging
from swe_fleet.cli.consume import consume
from swe_fleet.cli.dispatch import dispatch
from swe_fleet.cli.doctor import doctor
from swe_fleet.cli.engine import engine
from swe_fleet.cli.local import local
from swe_fleet.cli.model import model
from swe_fleet.cli.nats import nats_group
from swe_fleet.cli.node import node
from swe_fleet.cli.outbox import outbox
from swe_fleet.cli.render import format_event
from swe_fleet.cli.report import report, result
from swe_fleet.cli.run import run
from swe_fleet.cli.submit import submit
from swe_fleet.cli.watch import watch

__all__ = ["cli", "format_event", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swe-fleet")
def cli() -> None:
    """Multi-agent LLM councils as Ray Jobs; results on NATS JetStream.

    Exit codes: 0 succeeded, 1 job failed, 2 usage, 3 bad input (spec, address, conflict),
    4 job stopped, 5 dashboard/NATS unreachable, 6 timeout, 7 local stack/model failed,
    8 a preflight check failed (doctor, or submit refusing), 130 interrupted
    (the whole table: swe_fleet.exit_codes).
    """
    # Logs go to stderr: stdout carries results (--json lines, ids) for scripts.
    configure_logging(json=False)


for _command in (
    run,
    submit,
    consume,
    watch,
    result,
    report,
    doctor,
    dispatch,
    engine,
    outbox,
    model,
    local,
    node,
    nats_group,
):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> Any:
    """Console entry point."""
    return cli.main(args=list(argv) if argv is not None else None, prog_name="swe-fleet")
