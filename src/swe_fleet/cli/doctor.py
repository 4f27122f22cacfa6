"""``swe-fleet doctor``: can this council run on that cluster?"""

from __future__ import annotations

import json

import click

from swe_fleet.cli._common import (
    ADDRESS_OPTION,
    CLIENT_NATS_URL_OPTION,
    ENV_OPTION,
    PREFLIGHT_TIMEOUT_OPTION,
    SPEC_ARGUMENT,
    check_budget,
    guard,
    info,
    load_spec,
    nats_auth_options,
    out,
)
from swe_fleet.cli.render import print_checks
from swe_fleet.exit_codes import ExitCode
from swe_fleet.preflight import DEFAULT_CHECK_TIMEOUT_S
from swe_fleet.preflight.node_check import DEFAULT_MIN_FREE_DISK_GB


@click.command()
@nats_auth_options
@SPEC_ARGUMENT
@ADDRESS_OPTION
@click.option(
    "--nats-url",
    default=None,
    help="override the spec's publish.nats_url (as the cluster sees it; checked from here and from "
    "every node)",
)
@CLIENT_NATS_URL_OPTION
@ENV_OPTION
@click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
@click.option(
    "--check-timeout",
    type=float,
    default=DEFAULT_CHECK_TIMEOUT_S,
    show_default=True,
    help="seconds for each check",
)
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
    default=DEFAULT_MIN_FREE_DISK_GB,
    show_default=True,
    help="free disk each node needs where runtime envs and models land",
)
def doctor(
    spec_path: str,
    address: str | None,
    nats_url: str | None,
    client_nats_url: str | None,
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
    from swe_fleet.addresses import auth_token_from_env, client_jobs_api_url
    from swe_fleet.preflight.cache import PreflightCache
    from swe_fleet.preflight.orchestration import checks_as_json, run_doctor
    from swe_fleet.submit.request import CouncilSubmission

    def body() -> int:
        spec = load_spec(spec_path)
        check_budget(spec, spec_path)  # a spec that cannot fit: exit 3
        url = address or client_jobs_api_url()
        checks = run_doctor(
            CouncilSubmission(spec=spec, env_kind=env_kind, nats_url=nats_url),
            url,
            auth_token_from_env(),
            check_timeout_s=check_timeout,
            cluster=cluster,
            cluster_timeout_s=preflight_timeout,
            min_free_disk_gb=min_free_disk_gb,
            client_nats_url=client_nats_url,
            cache=PreflightCache.default(),
            on_info=info,
        )
        if as_json:
            out.print(json.dumps(checks_as_json(checks)), markup=False)
        else:
            print_checks(checks, f"swe-fleet doctor: {spec_path} on {url} ({env_kind} runtime_env)")
        return int(ExitCode.PREFLIGHT_FAILED if any(c.failed for c in checks) else ExitCode.OK)

    guard(body)
