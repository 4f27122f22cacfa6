"""Preflight, cluster half as the client runs it: the preflight job, its report, and the cache.

The preflight job (``jobs/preflight.py``) is submitted through the Jobs API with the runtime_env
the council would get (built by :func:`swe_fleet.submit.client.staged_runtime_env`, the same call the
council's submission makes) and ``entrypoint_num_cpus=0``. It sends one task to every alive node
(see :mod:`swe_fleet.preflight.node_check`) and prints a report line that this module reads back from
the job's logs. Waiting for it is bounded; a job that fails before reporting (its runtime_env
did not build on the driver's node) becomes a ``runtime-env`` row of that node.

Passing results are cached under ``~/.cache/swe-fleet/preflight/`` (``SWE_FLEET_CACHE`` moves
it), keyed on the dashboard URL, the set of alive node ids (a new node invalidates it), the
runtime_env's fingerprint and what the checks expect (pins, versions, NATS and server URLs,
GPUs, disk); entries expire after an hour. Failures are never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import swe_fleet
from swe_fleet.errors import JobWaitTimeout, PreflightFailed, SubmissionError, SweFleetError
from swe_fleet.llm.model import cache_dir
from swe_fleet.preflight import DEFAULT_PREFLIGHT_TIMEOUT_S
from swe_fleet.preflight.node_check import (
    CLUSTER,
    DEFAULT_MIN_FREE_DISK_GB,
    FAIL,
    RUNTIME_ENV_FIX,
    Check,
    NodeExpectations,
    Pin,
    node_label,
    one_line,
    parse_pins,
    parse_report,
)
from swe_fleet.submit.client import (
    PREFLIGHT_FILE,
    CouncilJobClient,
    CouncilRequest,
    PreflightHook,
    project_root,
    runtime_env_fingerprint,
)

#: The one pin list (relative to the checkout).
WORKER_PINS = Path("images") / "requirements-worker.txt"
#: How long a passing preflight stays good for the same cluster and runtime_env.
CACHE_MAX_AGE_S = 3600.0
PREFLIGHT_JOB_PREFIX = "swe-fleet-preflight-"


def read_worker_pins(root: Path | None = None) -> tuple[Pin, ...]:
    """The pin list ``images/requirements-worker.txt`` of the checkout.

    Raises:
        SubmissionError: unreadable, or a line that is not an exact pin.
    """
    path = (root or project_root()) / WORKER_PINS
    try:
        return parse_pins(path.read_text(), str(path))
    except OSError as exc:
        raise SubmissionError(f"cannot read the pin list {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SubmissionError(f"{exc}; the pin list holds exact pins only") from None


def node_task_bound(timeout_s: float) -> float:
    """The node tasks' share of the preflight bound; the rest is for the driver's own set-up
    (always within the bound: the nodes' rows must arrive before the client stops waiting)."""
    return 0.75 * timeout_s


def node_expectations(
    request: CouncilRequest,
    *,
    root: Path | None = None,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB,
) -> NodeExpectations:
    """What every node must provide for ``request``'s council."""
    spec = request.effective_spec()
    engine = spec.backend == "engine"
    return NodeExpectations(
        pins=read_worker_pins(root),
        swe_fleet_version=swe_fleet.__version__,
        nats_url=spec.publish.nats_url,
        llm_server_url=None if engine else spec.server.url,
        gpus_per_replica=spec.model.num_gpus if engine else 0.0,
        replicas=spec.model.replicas if engine else 1,
        min_free_disk_gb=min_free_disk_gb,
        env_kind=request.env_kind,
        timeout_s=node_task_bound(timeout_s),
    )


def _driver_node(client: CouncilJobClient, node_id: str | None) -> tuple[str, str]:
    """(label, node id) of the node a job's driver ran on (the head when Ray does not say)."""
    try:
        nodes = client.alive_nodes()
    except SweFleetError:
        nodes = []
    for n in nodes:
        if (node_id and n.get("node_id") == node_id) or (not node_id and n.get("is_head_node")):
            return node_label(str(n["node_ip"]), str(n["node_id"]), bool(n.get("is_head_node"))), str(
                n["node_id"]
            )
    return ("driver", node_id or "")


def _unreported_job(client: CouncilJobClient, job_id: str, status: str, logs: str) -> Check:
    """The row for a preflight job that ended without its report."""
    info = client.info(job_id)
    message = info.message or ""
    label, node_id = _driver_node(client, info.driver_node_id)
    # error_type is Ray's JobErrorType (RUNTIME_ENV_SETUP_FAILURE); the message says "runtime env".
    if "RUNTIME_ENV" in str(info.error_type or "").upper() or "runtime env" in message.lower():
        return Check(
            "runtime-env",
            FAIL,
            f"the job's runtime_env could not be built on the driver's node: {one_line(message)}",
            RUNTIME_ENV_FIX,
            node=label,
            node_id=node_id,
        )
    tail = one_line("\n".join(logs.splitlines()[-15:]) or message)
    return Check(
        "preflight-job",
        FAIL,
        f"{job_id} ended {status} without a report: {tail}",
        f"see `ray job logs {job_id}` and `ray job status {job_id}`",
        node=CLUSTER,
    )


def run_cluster_checks(
    client: CouncilJobClient,
    request: CouncilRequest,
    runtime_env: dict[str, Any],
    expectations: NodeExpectations,
    *,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """Run the preflight job in ``runtime_env`` (bounded by ``timeout_s``); one row per node and check.

    A passing job is deleted afterwards; a failing one is kept for its logs.

    Raises:
        DashboardUnreachable / SubmissionError: the Jobs API failed.
    """
    job_id = PREFLIGHT_JOB_PREFIX + uuid.uuid4().hex[:12]
    client.submit_job(
        entrypoint=shlex.join(["python", PREFLIGHT_FILE, *expectations.to_argv()]),
        runtime_env=runtime_env,
        submission_id=job_id,
        metadata={
            "swe_fleet_preflight": "1",
            "swe_fleet_version": swe_fleet.__version__,
            "council": request.spec.name,
            "runtime_env": request.env_kind,
        },
    )
    on_info(f"preflight: job {job_id} checks every node in the {request.env_kind} runtime_env")
    try:
        status = client.wait(job_id, timeout_s=timeout_s)
    except JobWaitTimeout:
        with contextlib.suppress(SweFleetError):
            client.stop(job_id)
        return [
            Check(
                "preflight-job",
                FAIL,
                f"{job_id} did not finish within {timeout_s:g} s (it was stopped)",
                "raise --preflight-timeout (a first pip runtime_env can take minutes); "
                f"see `ray job logs {job_id}`",
                node=CLUSTER,
            )
        ]
    logs = client.logs(job_id)
    doc = parse_report(logs)
    if doc is None:
        return [_unreported_job(client, job_id, status.value, logs)]
    checks = [Check.from_dict(c) for c in doc.get("checks", [])]
    if not checks:
        checks = [Check("preflight-job", FAIL, f"{job_id} found no alive node", "start the cluster's nodes")]
    if not any(c.failed for c in checks):
        with contextlib.suppress(SweFleetError):
            client.delete(job_id)
    return checks


# ---- cache -------------------------------------------------------------------------------------


def preflight_key(
    dashboard_url: str, node_ids: Iterable[str], runtime_env: dict[str, Any], expectations: NodeExpectations
) -> str:
    """The cache key of a preflight result: cluster, alive nodes, runtime_env, expectations."""
    expected = {k: v for k, v in asdict(expectations).items() if k not in ("timeout_s", "probe_timeout_s")}
    doc = {
        "cluster": dashboard_url.rstrip("/"),
        "nodes": sorted(node_ids),
        "runtime_env": runtime_env_fingerprint(runtime_env),
        "expect": expected,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def cluster_preflight_key(
    client: CouncilJobClient, runtime_env: dict[str, Any], expectations: NodeExpectations
) -> str:
    """:func:`preflight_key` of the cluster ``client`` talks to, with the nodes alive now."""
    node_ids = [str(n["node_id"]) for n in client.alive_nodes()]
    return preflight_key(client.url, node_ids, runtime_env, expectations)


@dataclass(frozen=True)
class PreflightCache:
    """Passing preflight results on disk, one small JSON file per key."""

    root: Path
    max_age_s: float = CACHE_MAX_AGE_S

    @classmethod
    def default(cls) -> PreflightCache:
        """``~/.cache/swe-fleet/preflight`` (next to the models: ``SWE_FLEET_CACHE`` moves both)."""
        return cls(cache_dir().parent / "preflight")

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def passed_age(self, key: str) -> float | None:
        """Seconds since this key passed, or None (never, expired, or unreadable)."""
        try:
            doc = json.loads(self._path(key).read_text())
            age = time.time() - float(doc["passed_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return age if 0 <= age <= self.max_age_s else None

    def store(self, key: str, checks: Sequence[Check]) -> None:
        """Remember a passing result (written atomically; a cache that cannot be written is skipped)."""
        if any(c.failed for c in checks):
            return
        doc = {"passed_at": time.time(), "checks": [c.to_dict() for c in checks]}
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self._path(key).with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(doc))
            tmp.replace(self._path(key))


# ---- before a submission -----------------------------------------------------------------------


def preflight_failed(failures: Sequence[Check]) -> PreflightFailed:
    """The error that refuses a submission: every failing node and check, with its fix."""
    lines = tuple(f"{c.node}: {c.name}: {c.detail}. Fix: {c.fix}" for c in failures)
    message = (
        "preflight failed, the council was not submitted:\n"
        + "\n".join(f"  - {line}" for line in lines)
        + "\n  (`swe-fleet doctor` shows every check; --skip-preflight submits anyway)"
    )
    return PreflightFailed(message, node=failures[0].node, check=failures[0].name, failures=lines)


def ensure_preflight(
    client: CouncilJobClient,
    request: CouncilRequest,
    runtime_env: dict[str, Any],
    *,
    root: Path | None = None,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    min_free_disk_gb: float = DEFAULT_MIN_FREE_DISK_GB,
    cache: PreflightCache | None = None,
    on_info: Callable[[str], None] = lambda m: None,
) -> list[Check]:
    """Run the cluster preflight for ``request`` unless ``cache`` says it passed; raise if it fails.

    Returns:
        The checks that ran (empty when the cached result was used).

    Raises:
        PreflightFailed: a check failed on some node (each failure named with its fix).
    """
    expectations = node_expectations(
        request, root=root, timeout_s=timeout_s, min_free_disk_gb=min_free_disk_gb
    )
    key = None
    if cache is not None:
        key = cluster_preflight_key(client, runtime_env, expectations)
        age = cache.passed_age(key)
        if age is not None:
            on_info(f"preflight: passed {age:.0f} s ago on these nodes with this runtime_env (cached)")
            return []
    started = time.monotonic()
    checks = run_cluster_checks(
        client, request, runtime_env, expectations, timeout_s=timeout_s, on_info=on_info
    )
    failures = [c for c in checks if c.failed]
    if failures:
        raise preflight_failed(failures)
    if cache is not None and key is not None:
        cache.store(key, checks)  # the key of the nodes alive before the run
    nodes = {c.node_id for c in checks if c.node_id}
    on_info(f"preflight: every check passed on {len(nodes)} node(s) in {time.monotonic() - started:.0f} s")
    return checks


def preflight_hook(
    client: CouncilJobClient,
    *,
    timeout_s: float = DEFAULT_PREFLIGHT_TIMEOUT_S,
    cache: PreflightCache | None = None,
    on_info: Callable[[str], None] = lambda m: None,
) -> PreflightHook:
    """A ``preflight`` for :meth:`CouncilJobClient.submit`: :func:`ensure_preflight` on its runtime_env."""

    def hook(request: CouncilRequest, runtime_env: dict[str, Any]) -> None:
        ensure_preflight(client, request, runtime_env, timeout_s=timeout_s, cache=cache, on_info=on_info)

    return hook
