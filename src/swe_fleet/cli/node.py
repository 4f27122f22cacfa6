"""``swe-fleet node start``: this host's Ray node (the baked image's entrypoint)."""

from __future__ import annotations

import json

import click

from swe_fleet.cli._common import err, guard, out
from swe_fleet.exit_codes import ExitCode


@click.group()
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
    RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (passed to Ray as they are);
    a head without it is refused (its dashboard listens on every interface) unless
    SWE_FLEET_ALLOW_OPEN_DASHBOARD=1.
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

    guard(body)
