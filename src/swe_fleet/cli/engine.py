"""``swe-fleet engine up | status | down``: the cluster's shared engine pools (each through a
short Ray job, like every other command: only the Jobs API is needed)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from swe_fleet.cli._common import ADDRESS_OPTION, ENV_OPTION, SPEC_ARGUMENT, err, guard, load_spec, out
from swe_fleet.exit_codes import ExitCode
from swe_fleet.submit import DEFAULT_ENGINE_JOB_TIMEOUT_S

_TIMEOUT = click.option(
    "--timeout", "timeout_s", type=float, default=DEFAULT_ENGINE_JOB_TIMEOUT_S, show_default=True,
    help="seconds to wait for the engine job",
)  # fmt: skip
_JSON = click.option("--json", "as_json", is_flag=True, help="print the report as JSON")


def _common(command: Callable[..., None]) -> Callable[..., None]:
    for option in (_JSON, _TIMEOUT, ENV_OPTION, ADDRESS_OPTION):
        command = option(command)
    return command


@click.group()
def engine() -> None:
    """The shared engine pools: vLLM replicas that outlive a job, one pool per model and engine
    options, reused and batched together by every council with ``model.engine: shared``."""


@engine.command("up")
@SPEC_ARGUMENT
@_common
def engine_up(spec_path: str, address: str | None, env_kind: str, timeout_s: float, as_json: bool) -> None:
    """Start the pool SPEC's council would use (its model.replicas replicas) and wait until
    they are loaded; a running pool is reused as it is. Exit 1 when it could not start."""
    _run("up", address, env_kind, timeout_s, as_json, spec_path=spec_path)


@engine.command("status")
@_common
def engine_status(address: str | None, env_kind: str, timeout_s: float, as_json: bool) -> None:
    """List every pool replica: model, node, requests running and waiting per council, idle time."""
    _run("status", address, env_kind, timeout_s, as_json)


@engine.command("down")
@click.option("--pool", default=None, help="the pool to stop (as `engine status` names it; default: all)")
@_common
def engine_down(
    pool: str | None, address: str | None, env_kind: str, timeout_s: float, as_json: bool
) -> None:
    """Stop pool replicas now (requests in flight on them move to other replicas or fail)."""
    _run("down", address, env_kind, timeout_s, as_json, pool=pool)


def _run(
    op: str,
    address: str | None,
    env_kind: str,
    timeout_s: float,
    as_json: bool,
    *,
    spec_path: str | None = None,
    pool: str | None = None,
) -> None:
    from swe_fleet.addresses import auth_token_from_env, client_jobs_api_url
    from swe_fleet.errors import SpecError
    from swe_fleet.submit.engine_jobs import run_engine_job
    from swe_fleet.submit.jobs_api import JobsApi

    def body() -> int:
        spec = load_spec(spec_path) if spec_path else None
        if spec is not None and spec.model.engine != "shared":
            raise SpecError(
                "is per-job: such a council starts engines of its own and has no pool to start; "
                "set model.engine: shared",
                source=spec_path or "<string>",
                field="model.engine",
            )
        jobs = JobsApi(address or client_jobs_api_url(), auth_token=auth_token_from_env())
        report = run_engine_job(jobs, op, env_kind=env_kind, spec=spec, pool=pool, timeout_s=timeout_s)
        if as_json:
            out.print(json.dumps(report), markup=False)
        else:
            for name in report.get("stopped", []):
                err.print(f"stopped {name}", markup=False)
            print_replicas(report.get("replicas", []))
        if report.get("error"):
            err.print(f"[bold red]error:[/] {report['error']}")
        return int(ExitCode.OK if report["status"] == "SUCCEEDED" else ExitCode.JOB_FAILED)

    guard(body)


def print_replicas(replicas: list[dict[str, Any]]) -> None:
    """One row per pool replica."""
    if not replicas:
        out.print("no engine pool is running")
        return
    table = Table(title="engine pools", show_lines=False)
    for column in (
        "replica",
        "model",
        "node",
        "running",
        "waiting",
        "councils now / served",
        "idle s",
        "up s",
    ):
        table.add_column(column)
    for r in replicas:
        if "error" in r:
            table.add_row(r["name"], "", "", "", "", "", "", r["error"])
            continue
        running, waiting = r.get("running", {}), r.get("waiting", {})
        table.add_row(
            r["name"],
            str(r.get("model", "")),
            str(r.get("node_id", ""))[:12],
            str(sum(running.values())),
            str(sum(waiting.values())),
            f"{len(running.keys() | waiting.keys())} / {r.get('clients', 0)}",
            f"{r.get('idle_s', 0):g} / {r.get('idle_timeout_s') or '-'}",
            f"{r.get('up_s', 0):g}",
        )
    out.print(table)
