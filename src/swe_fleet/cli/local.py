"""``swe-fleet local up``: the embedded local stack in the foreground."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from swe_fleet.cli._common import err, guard, out
from swe_fleet.exit_codes import ExitCode

#: Logical CPUs of the local Ray head.
DEFAULT_NUM_CPUS = 2


@click.group()
def local() -> None:
    """The embedded local stack (nats-server with JetStream, token and TLS + a Ray head)."""


@local.command("up")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="where logs and the JetStream store live (default: a temp dir)",
)
@click.option("--num-cpus", type=int, default=DEFAULT_NUM_CPUS, show_default=True)
def local_up(workdir: str | None, num_cpus: int) -> None:
    """Start the local stack in the foreground; print its addresses and the variables a client
    sets (Ray's token, NATS's token file and CA: NATS requires both); stop it with Ctrl-C,
    SIGTERM or SIGHUP (also when started in the background; a second signal while stopping
    kills what is left). Exit 0 when stopped by a signal."""
    from swe_fleet._processes import stop_on_signals
    from swe_fleet.local.stack import local_stack

    def body() -> int:
        root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="swe-fleet-local-"))
        with stop_on_signals():
            try:
                with local_stack(root, num_cpus=num_cpus) as stack:
                    # NATS_URL last: a script reading the exports knows they are complete once it came.
                    env = {**stack.ray.client_env(), **stack.client_env, "NATS_URL": stack.nats.url}
                    for k, v in env.items():
                        out.print(f"export {k}={v}", markup=False)
                    err.print(f"Ray Client: {stack.ray.client_url}   logs: {root}   (Ctrl-C stops the stack)")
                    out.file.flush()
                    procs = [p for p in (stack.ray.process, stack.nats.process) if p is not None]
                    while all(p.alive() for p in procs):
                        time.sleep(1)
                    dead = next(p for p in procs if not p.alive())
                    err.print(
                        f"{dead.name} exited with code {dead.popen.returncode}:\n{dead.tail()}", markup=False
                    )
            except KeyboardInterrupt:
                # Also SIGTERM and SIGHUP (StopSignal), whenever it came (even just after the
                # exports were printed): the stack has stopped on the way out of its block.
                return int(ExitCode.OK)
        return int(ExitCode.LOCAL_STACK)

    guard(body)
