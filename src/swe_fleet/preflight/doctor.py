"""``swe-fleet doctor``: can this council run on that cluster? Client side, then every node.

Client side (this module), each check bounded in time, one :class:`Check` row each with what to
do when it fails:

- ``dashboard``: the Jobs API answers at the dashboard URL;
- ``ray-version``: the cluster's Ray equals this client's;
- ``auth``: a token is present when the cluster requires one (and the cluster accepts it);
- ``nats``: NATS answers at the spec's URL, with JetStream;
- ``stream``: the events stream is absent (it will be created) or fit for our events;
- ``llm-server`` (server backend only): the vLLM server is healthy and serves the spec's model.

Cluster side (:mod:`swe_fleet.preflight.cluster`, :mod:`swe_fleet.preflight.node_check`): a preflight
job in the council's own runtime_env, one task per alive node: pinned modules at their pinned
versions, swe-fleet's version, NATS and the vLLM server from that node, GPUs, free disk.
:func:`run_doctor` runs both halves.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
import ray

from swe_fleet.addresses import jobs_api_url
from swe_fleet.errors import LLMError, NatsUnreachable, SubmissionError, SweFleetError
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.nats.publisher import PublishPolicy, connect_nats, stream_config_differences
from swe_fleet.preflight import DEFAULT_PREFLIGHT_TIMEOUT_S
from swe_fleet.preflight.cluster import (
    PreflightCache,
    cluster_preflight_key,
    node_expectations,
    run_cluster_checks,
)
from swe_fleet.preflight.node_check import CLUSTER, DEFAULT_MIN_FREE_DISK_GB, FAIL, OK, SKIP, Check
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit.client import CouncilJobClient, CouncilRequest, staged_runtime_env

__all__ = ["FAIL", "OK", "SKIP", "Check", "checks_as_json", "run_client_checks", "run_doctor"]


def _http_get(url: str, token: str | None, timeout_s: float) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked by jobs_api_url
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def check_cluster(dashboard_url: str, token: str | None, timeout_s: float = 5.0) -> list[Check]:
    """dashboard, ray-version and auth checks (HTTP only, bounded by ``timeout_s`` each)."""
    try:
        url = jobs_api_url(dashboard_url)
    except SweFleetError as exc:
        return [Check("dashboard", FAIL, str(exc), "use http://HEAD:8265")]
    try:
        status, body = _http_get(f"{url}/api/version", token, timeout_s)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return [
            Check(
                "dashboard",
                FAIL,
                f"{url} did not answer within {timeout_s:.0f} s: {exc}",
                "check the address and that the dashboard port (8265) is reachable from here",
            ),
            Check("ray-version", SKIP, "dashboard unreachable"),
            Check("auth", SKIP, "dashboard unreachable"),
        ]
    checks = []
    if status in (401, 403):
        detail = (
            "the cluster refused this client's token"
            if token
            else "the cluster requires a token, none is set"
        )
        return [
            Check("dashboard", OK, f"{url} answers (token auth on)"),
            Check("ray-version", SKIP, "needs a token the cluster accepts"),
            Check(
                "auth",
                FAIL,
                f"{detail} ({status})",
                "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token",
            ),
        ]
    if status != 200:
        checks.append(
            Check(
                "dashboard",
                FAIL,
                f"GET {url}/api/version answered {status}",
                "give the Ray dashboard's URL (http://HEAD:8265)",
            )
        )
        return checks
    checks.append(Check("dashboard", OK, f"{url} answers"))
    try:
        server_version = str(json.loads(body)["ray_version"])
    except (ValueError, KeyError, TypeError):
        server_version = "?"
    if server_version == ray.__version__:
        checks.append(Check("ray-version", OK, f"cluster and client run Ray {server_version}"))
    else:
        checks.append(
            Check(
                "ray-version",
                FAIL,
                f"cluster runs Ray {server_version}, this client {ray.__version__}",
                f"install ray[default]=={server_version} here, or use the matching image",
            )
        )
    anon_status, _ = _http_get(f"{url}/api/jobs/", None, timeout_s)
    requires_token = anon_status in (401, 403)
    if not requires_token:
        checks.append(Check("auth", OK, "the cluster does not require a token"))
    elif not token:
        checks.append(
            Check(
                "auth",
                FAIL,
                "the cluster requires a token and none is set",
                "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token",
            )
        )
    else:
        authed_status, _ = _http_get(f"{url}/api/jobs/", token, timeout_s)
        if authed_status == 200:
            checks.append(Check("auth", OK, "the cluster accepts this client's token"))
        else:
            checks.append(
                Check(
                    "auth",
                    FAIL,
                    f"the cluster refused the token ({authed_status})",
                    "set RAY_AUTH_TOKEN to the token of this cluster",
                )
            )
    return checks


async def check_nats(spec: CouncilSpec, timeout_s: float = 5.0) -> list[Check]:
    """nats and stream checks against the spec's publish target (bounded)."""
    url = spec.publish.nats_url
    try:
        nc = await connect_nats(url, timeout_s=timeout_s, name="swe-fleet-doctor")
    except NatsUnreachable as exc:
        return [
            Check("nats", FAIL, str(exc), "check publish.nats_url / --nats-url and that nats-server runs"),
            Check("stream", SKIP, "NATS unreachable"),
        ]
    try:
        js = nc.jetstream(timeout=timeout_s)
        try:
            await asyncio.wait_for(js.account_info(), timeout_s)
        except (TimeoutError, nats.errors.Error) as exc:
            return [
                Check(
                    "nats",
                    FAIL,
                    f"{url} answers but JetStream does not ({type(exc).__name__})",
                    "start nats-server with -js (and a store directory, -sd)",
                ),
                Check("stream", SKIP, "no JetStream"),
            ]
        checks = [Check("nats", OK, f"{url} answers with JetStream")]
        try:
            info = await asyncio.wait_for(js.stream_info(spec.publish.stream), timeout_s)
        except nats.js.errors.NotFoundError:
            checks.append(
                Check("stream", OK, f"{spec.publish.stream} does not exist yet; the job creates it")
            )
            return checks
        horizon = PublishPolicy.from_spec(spec.publish).retry_horizon_s
        differences = stream_config_differences(info.config, AGENT_RESPONSES_SUBJECTS, horizon)
        if differences:
            checks.append(
                Check(
                    "stream",
                    FAIL,
                    f"{spec.publish.stream}: " + "; ".join(differences),
                    "fix the stream, or use another one (publish.stream)",
                )
            )
        else:
            checks.append(Check("stream", OK, f"{spec.publish.stream} fits (file storage, subjects, window)"))
        return checks
    finally:
        await nc.close()


async def check_llm_server(spec: CouncilSpec, timeout_s: float = 5.0) -> list[Check]:
    """llm-server check, for ``backend: server`` specs only."""
    if spec.backend != "server":
        return [Check("llm-server", SKIP, "engine backend: vLLM runs inside the job")]
    from swe_fleet.llm.server import served_models, wait_until_healthy

    try:
        await wait_until_healthy(spec.server.url, timeout_s=timeout_s)
        models = await served_models(spec.server.url, timeout_s=timeout_s)
    except LLMError as exc:
        return [Check("llm-server", FAIL, str(exc), "start the vLLM server, or fix server.url")]
    if spec.model.name not in models:
        return [
            Check(
                "llm-server",
                FAIL,
                f"{spec.server.url} serves {models}, not {spec.model.name!r}",
                "set model.name to a served name (--served-model-name)",
            )
        ]
    return [Check("llm-server", OK, f"{spec.server.url} is healthy and serves {spec.model.name!r}")]


def run_client_checks(
    spec: CouncilSpec, dashboard_url: str, token: str | None, timeout_s: float = 5.0
) -> list[Check]:
    """Every client-side check, in report order."""

    async def nats_and_llm() -> list[Check]:
        return [*(await check_nats(spec, timeout_s)), *(await check_llm_server(spec, timeout_s))]

    return [*check_cluster(dashboard_url, token, timeout_s), *asyncio.run(nats_and_llm())]


def run_doctor(
    request: CouncilRequest,
    dashboard_url: str,
    token: str | None,
    *,
    check_timeout_s: float = 5.0,
    cluster: bool = True,
    cluster_timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB,
    root: Path | None = None,
    cache: PreflightCache | None = None,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """Every check: client side, then (``cluster``) the preflight job on every alive node.

    The cluster half runs in the runtime_env ``request`` would be submitted with; a passing
    result is stored in ``cache`` (so a ``submit`` right after does not run it again).

    Raises:
        SubmissionError: the checkout has no pin list or runtime_envs (not a cluster problem).
    """
    spec = request.effective_spec()
    checks = run_client_checks(spec, dashboard_url, token, check_timeout_s)
    if not cluster:
        return checks
    if any(c.failed for c in checks if c.name in ("dashboard", "auth")):
        return [
            *checks,
            Check("nodes", SKIP, "the Jobs API is not usable from here (see above)", node=CLUSTER),
        ]
    expectations = node_expectations(
        request, root=root, timeout_s=cluster_timeout_s, min_free_disk_gb=min_free_disk_gb
    )
    with staged_runtime_env(request, root) as runtime_env:
        try:
            client = CouncilJobClient(
                dashboard_url, auth_token=token, request_timeout_s=max(check_timeout_s, 10)
            )
            key = cluster_preflight_key(client, runtime_env, expectations) if cache is not None else None
            cluster_checks = run_cluster_checks(
                client, request, runtime_env, expectations, timeout_s=cluster_timeout_s, on_info=on_info
            )
        except SubmissionError as exc:  # the Jobs API failed mid-way: a row, not a crash
            cluster_checks = [
                Check("preflight-job", FAIL, str(exc), "check the dashboard and the Jobs API", node=CLUSTER)
            ]
        else:
            if cache is not None and key is not None:
                cache.store(key, cluster_checks)
    return [*checks, *cluster_checks]


def checks_as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [c.to_dict() for c in checks]
