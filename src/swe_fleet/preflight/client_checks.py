"""Preflight, client side: can this client use the cluster, NATS and the vLLM server?

Each check is bounded in time and gives one :class:`~swe_fleet.preflight.node_check.Check` row
with what to do when it fails:

- ``dashboard``: the Jobs API answers at the dashboard URL;
- ``ray-version``: the cluster's Ray equals this client's;
- ``auth``: a token is present when the cluster requires one (and the cluster accepts it);
- ``nats``: NATS answers at the spec's URL, with JetStream;
- ``stream``: the events stream is absent (it will be created) or fit for our events;
- ``llm-server`` (server backend only): the vLLM server is healthy and serves the spec's model.

The cluster half (every node, from inside the cluster) is :mod:`swe_fleet.preflight.job`;
:mod:`swe_fleet.preflight.orchestration` runs both.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import nats.errors
import nats.js.errors
import ray

from swe_fleet.addresses import jobs_api_url
from swe_fleet.errors import ConfigError, LLMError, NatsRefused, NatsUnreachable, SweFleetError
from swe_fleet.events import AGENT_RESPONSES_SUBJECTS
from swe_fleet.nats.auth import NatsAuth
from swe_fleet.nats.connection import close_nats, connect_nats
from swe_fleet.nats.policy import PublishPolicy
from swe_fleet.nats.streams import stream_config_differences
from swe_fleet.preflight import DEFAULT_CHECK_TIMEOUT_S
from swe_fleet.preflight.node_check import FAIL, OK, SKIP, Check
from swe_fleet.spec import CouncilSpec


def _http_get(url: str, token: str | None, timeout_s: float) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) checked by jobs_api_url
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def check_cluster(
    dashboard_url: str, token: str | None, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S
) -> list[Check]:
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


async def check_nats(
    spec: CouncilSpec, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S, url: str | None = None
) -> list[Check]:
    """nats and stream checks against the spec's publish target, reached at ``url`` from here
    when the cluster's URL is not this client's (bounded)."""
    url = url or spec.publish.nats_url
    try:
        auth = NatsAuth.from_env()
    except ConfigError as exc:
        return [Check("nats", FAIL, str(exc), f"fix {exc.setting}"), Check("stream", SKIP, "NATS not tried")]
    try:
        nc = await connect_nats(url, timeout_s=timeout_s, name="swe-fleet-doctor", auth=auth)
    except NatsRefused as exc:
        return [
            Check("nats", FAIL, str(exc), "set the NATS_* variable (or --nats-* option) the message names"),
            Check("stream", SKIP, "NATS refused this client"),
        ]
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
        checks = [Check("nats", OK, f"{url} answers with JetStream; this client used {auth.describe(url)}")]
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
        await close_nats(nc)


async def check_llm_server(spec: CouncilSpec, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> list[Check]:
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
    spec: CouncilSpec,
    dashboard_url: str,
    token: str | None,
    timeout_s: float = DEFAULT_CHECK_TIMEOUT_S,
    *,
    nats_url: str | None = None,
) -> list[Check]:
    """Every client-side check, in report order (NATS at ``nats_url`` when given)."""

    async def nats_and_llm() -> list[Check]:
        return [*(await check_nats(spec, timeout_s, nats_url)), *(await check_llm_server(spec, timeout_s))]

    return [*check_cluster(dashboard_url, token, timeout_s), *asyncio.run(nats_and_llm())]
