"""Submit council jobs through the Ray Jobs API and follow them to a terminal state.

- The ``submission_id`` is derived from the request (spec, runtime env, overrides): the same
  request twice finds the existing job instead of Ray's HTTP 500; a different request under an
  explicit id that is taken raises :class:`~swe_fleet.errors.SubmissionConflict`.
- ``entrypoint_num_cpus=0``: a driver holding a CPU starves its own engine on small clusters.
- Every HTTP request is bounded (``request_timeout_s``); waiting for the job is bounded.
- One function builds the runtime_env of a request (:func:`staged_runtime_env`): the council
  job and its preflight job (``swe_fleet.preflight.cluster``) run in the very same one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import requests
import yaml
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

import swe_fleet
from swe_fleet.addresses import jobs_api_url
from swe_fleet.errors import (
    AddressError,
    DashboardUnreachable,
    JobWaitTimeout,
    SubmissionConflict,
    SubmissionError,
)
from swe_fleet.spec import CouncilSpec
from swe_fleet.submit import RUNTIME_ENV_KINDS

#: Retries of one deliberation (``--retry-failed``) before the id must change.
MAX_ATTEMPTS = 20
ENTRYPOINT_FILE = "council.py"
PREFLIGHT_FILE = "preflight.py"
STAGED_SPEC_FILE = "spec.json"
#: Bound on listing the cluster's nodes through the State API.
NODES_LIMIT = 10000


def project_root() -> Path:
    """The checkout that holds ``jobs/`` and ``runtime_envs/`` (swe-fleet runs from a checkout).

    Raises:
        SubmissionError: the package is not inside a checkout.
    """
    root = Path(swe_fleet.__file__).resolve().parents[2]
    entrypoints = [root / "jobs" / name for name in (ENTRYPOINT_FILE, PREFLIGHT_FILE)]
    if not all(p.is_file() for p in entrypoints) or not (root / "runtime_envs").is_dir():
        raise SubmissionError(
            f"cannot find jobs/{ENTRYPOINT_FILE}, jobs/{PREFLIGHT_FILE} and runtime_envs/ next to {root}; "
            "run swe-fleet from a checkout of the repository (pip install -e .)"
        )
    return root


def load_runtime_env(kind: str, root: Path | None = None) -> dict[str, Any]:
    """Read ``runtime_envs/{kind}.yaml``.

    Raises:
        SubmissionError: unknown kind or unreadable file.
    """
    if kind not in RUNTIME_ENV_KINDS:
        raise SubmissionError(f"unknown runtime env {kind!r}; choose one of {', '.join(RUNTIME_ENV_KINDS)}")
    path = (root or project_root()) / "runtime_envs" / f"{kind}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SubmissionError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: expected a mapping")
    return data


@contextlib.contextmanager
def staged_runtime_env(request: CouncilRequest, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """The runtime_env of ``request``'s jobs, valid for the ``with`` block.

    ``runtime_envs/{kind}.yaml`` with its ``working_dir`` replaced by a staged folder that holds
    both entrypoints (``council.py``, ``preflight.py``) and the effective spec (``spec.json``),
    ``py_modules`` by this installed swe_fleet (``pinned``), and the request's extra env vars
    merged in. The council job and its preflight job both use this dict, so the preflight
    checks exactly the environment the council gets (and Ray builds it once per node).

    Raises:
        SubmissionError: unknown kind, unreadable file, or no checkout.
    """
    root = root or project_root()
    runtime_env = load_runtime_env(request.env_kind, root)
    staging = Path(tempfile.mkdtemp(prefix="swe-fleet-job-"))
    try:
        for name in (ENTRYPOINT_FILE, PREFLIGHT_FILE):
            shutil.copy2(root / "jobs" / name, staging / name)
        (staging / STAGED_SPEC_FILE).write_text(request.effective_spec().to_json())
        runtime_env["working_dir"] = str(staging)
        runtime_env.pop("excludes", None)
        if request.env_kind == "pinned":
            runtime_env["py_modules"] = [str(Path(swe_fleet.__file__).parent)]
        env_vars = {**runtime_env.get("env_vars", {}), **request.extra_env_vars}
        if env_vars:
            runtime_env["env_vars"] = env_vars
        yield runtime_env
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tree_digest(path: Path, skip: frozenset[str] = frozenset()) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if "__pycache__" in rel.parts or rel.as_posix() in skip:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def runtime_env_fingerprint(runtime_env: Mapping[str, Any]) -> str:
    """sha256 of what a runtime_env puts on a node: pip/env vars as given, local folders by content.

    The staged spec is left out: a preflight that passed holds for any spec of the same
    environment (the spec fields the checks use are keyed separately).
    """
    doc: dict[str, Any] = {}
    for key, value in runtime_env.items():
        if key == "working_dir" and Path(str(value)).is_dir():
            doc[key] = _tree_digest(Path(str(value)), frozenset({STAGED_SPEC_FILE}))
        elif key == "py_modules":
            doc[key] = [_tree_digest(Path(m)) if Path(m).is_dir() else m for m in value]
        else:
            doc[key] = value
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


#: Called with the request and its runtime_env right before a new job is submitted; raises to refuse.
PreflightHook = Callable[["CouncilRequest", dict[str, Any]], None]


def attempt_job_id(submission_id: str, attempt: int) -> str:
    """The Ray submission id of attempt ``attempt`` (0 is the first) of a deliberation."""
    return submission_id if attempt == 0 else f"{submission_id}-retry{attempt}"


@dataclass(frozen=True)
class CouncilRequest:
    """Everything that defines one council submission (and so its submission_id)."""

    spec: CouncilSpec
    env_kind: str = "pinned"
    nats_url: str | None = None
    extra_env_vars: Mapping[str, str] = field(default_factory=dict)
    submission_id: str | None = None

    def effective_spec(self) -> CouncilSpec:
        return self.spec.with_overrides(nats_url=self.nats_url)

    def request_hash(self) -> str:
        """sha256 over the effective spec, the runtime env kind and extra env vars."""
        doc = {
            "spec": json.loads(self.effective_spec().to_json()),
            "env": self.env_kind,
            "env_vars": dict(sorted(self.extra_env_vars.items())),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def derived_submission_id(self) -> str:
        """``council-{name}-{hash[:16]}`` unless an explicit id was given."""
        return self.submission_id or f"council-{self.spec.name}-{self.request_hash()[:16]}"


@dataclass(frozen=True)
class Submitted:
    """The job a submission refers to; ``created`` is False when it already existed.

    ``submission_id`` names the deliberation (event keys, checkpoint); ``job_id`` is the Ray
    submission id of this attempt (the same for the first attempt, ``{id}-retry{n}`` after).
    """

    submission_id: str
    job_id: str
    created: bool
    dashboard_url: str


#: Ray's client replaces the address it is given with these when they are set (as ray.init
#: does), so `--address` would silently go to whatever cluster the environment names.
_RAY_ADDRESS_OVERRIDES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    """Hide ``names`` from ``os.environ`` for the block (under a lock: the environment is global)."""
    with _ENV_LOCK:
        saved = {n: os.environ.pop(n) for n in names if n in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


class _BoundedJobClient(JobSubmissionClient):  # type: ignore[misc]
    """Ray's client with a timeout on every HTTP request (Ray's has none), talking to exactly
    the address it is given (Ray's lets ``RAY_ADDRESS`` override it)."""

    def __init__(self, address: str, *, headers: dict[str, str], request_timeout_s: float) -> None:
        self._request_timeout_s = request_timeout_s
        with _without_env(_RAY_ADDRESS_OVERRIDES):
            super().__init__(address=address, headers=headers)

    def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._request_timeout_s)
        return super()._do_request(method, endpoint, **kwargs)

    def find_job(self, submission_id: str) -> JobDetails | None:
        r = self._do_request("GET", f"/api/jobs/{submission_id}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise SubmissionError(
                f"GET /api/jobs/{submission_id} answered {r.status_code}: {r.text[:300]}",
                submission_id=submission_id,
                url=self._address,
            )
        return JobDetails(**r.json())


class CouncilJobClient:
    """Submits council jobs to one cluster's Jobs API and follows them."""

    def __init__(
        self, dashboard_url: str, *, auth_token: str | None = None, request_timeout_s: float = 10.0
    ) -> None:
        """Connect (bounded) and check the cluster answers.

        Raises:
            AddressError: not an ``http(s)://`` dashboard URL.
            DashboardUnreachable: no answer within ``request_timeout_s``.
            SubmissionError: the dashboard refused the auth token.
        """
        self.url = jobs_api_url(dashboard_url)
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        try:
            self._client = _BoundedJobClient(self.url, headers=headers, request_timeout_s=request_timeout_s)
        except (ConnectionError, requests.exceptions.RequestException) as exc:
            raise DashboardUnreachable(
                f"the Ray dashboard at {self.url} did not answer within {request_timeout_s:.0f} s "
                f"({type(exc).__name__}); check the address (http://HEAD:8265) and that the port "
                "is reachable from here",
                url=self.url,
            ) from None
        except RuntimeError as exc:  # Ray's version check: a 404 or an old Ray
            raise AddressError(
                f"{self.url} answered, but not as a Ray Jobs API ({str(exc)[:200]}); give the Ray "
                "dashboard's URL (http://HEAD:8265) of a Ray >= 2.x cluster",
                address=self.url,
                use="Jobs API",
            ) from None
        except Exception as exc:
            if type(exc).__name__ == "AuthenticationError":
                raise SubmissionError(
                    f"the Ray dashboard at {self.url} refused the request: {exc}. Set RAY_AUTH_TOKEN "
                    "(or RAY_AUTH_TOKEN_PATH) to the cluster's token",
                    url=self.url,
                ) from None
            raise

    def _call(self, what: str, fn: Callable[[], Any], submission_id: str | None = None) -> Any:
        try:
            return fn()
        except requests.exceptions.RequestException as exc:
            raise DashboardUnreachable(
                f"{what}: the Ray dashboard at {self.url} did not answer ({type(exc).__name__})",
                url=self.url,
                submission_id=submission_id,
            ) from None
        except RuntimeError as exc:  # Ray's client raises RuntimeError for every HTTP error
            raise SubmissionError(
                f"{what} failed: {str(exc)[:500]}", url=self.url, submission_id=submission_id
            ) from None

    @property
    def server_ray_version(self) -> str | None:
        return getattr(self._client, "_server_ray_version", None)

    def submit(
        self,
        request: CouncilRequest,
        *,
        root: Path | None = None,
        retry_failed: bool = False,
        preflight: PreflightHook | None = None,
    ) -> Submitted:
        """Submit the council job, or find the one this request already started.

        Ray never accepts a submission id twice, so a retry is a new Ray job (``{id}-retry{n}``)
        of the same deliberation: its driver publishes under the same ``submission_id`` (event
        keys) and resumes from that id's checkpoint, so events already published are dropped
        as duplicates. With ``retry_failed``, the latest attempt of this request is retried
        when it ended FAILED or STOPPED; otherwise the latest attempt is returned as it is.

        ``preflight`` runs only when a new job is about to be submitted, with the exact
        runtime_env that job gets; it raises (e.g. ``PreflightFailed``) to refuse.

        Raises:
            SubmissionConflict: the id is taken by a job with a different request.
            SubmissionError / DashboardUnreachable: the Jobs API failed.
        """
        sid = request.derived_submission_id()
        request_hash = request.request_hash()
        attempt, latest = self._latest_attempt(sid)
        if latest is not None:
            self._check_same_request(latest, sid, request_hash)
            if not (retry_failed and latest.status in (JobStatus.FAILED, JobStatus.STOPPED)):
                return Submitted(sid, attempt_job_id(sid, attempt), created=False, dashboard_url=self.url)
            attempt += 1
            if attempt >= MAX_ATTEMPTS:
                raise SubmissionError(
                    f"{sid} was already tried {MAX_ATTEMPTS} times; submit it under a new --submission-id",
                    submission_id=sid,
                    url=self.url,
                )
        job_id = attempt_job_id(sid, attempt)
        with staged_runtime_env(request, root) as runtime_env:
            if preflight is not None:
                preflight(request, runtime_env)
            metadata = {
                "swe_fleet_version": swe_fleet.__version__,
                "council": request.spec.name,
                "deliberation_id": sid,
                "attempt": str(attempt),
                "spec_hash": request.effective_spec().spec_hash(),
                "request_hash": request_hash,
                "runtime_env": request.env_kind,
            }
            try:
                self.submit_job(
                    entrypoint=f"python {ENTRYPOINT_FILE} --spec {STAGED_SPEC_FILE} --submission-id {sid}",
                    runtime_env=runtime_env,
                    submission_id=job_id,
                    metadata=metadata,
                )
            except DashboardUnreachable:
                raise
            except SubmissionError:
                # A concurrent submitter may have won the race for this id: that job is ours too.
                again = self._find(job_id, sid)
                if again is None:
                    raise
                self._check_same_request(again, sid, request_hash)
                return Submitted(sid, job_id, created=False, dashboard_url=self.url)
        return Submitted(sid, job_id, created=True, dashboard_url=self.url)

    def submit_job(
        self, *, entrypoint: str, runtime_env: dict[str, Any], submission_id: str, metadata: dict[str, str]
    ) -> None:
        """Submit one job with ``entrypoint_num_cpus=0`` (a driver must not hold a CPU its tasks need).

        Raises:
            DashboardUnreachable: no answer within the request bound.
            SubmissionError: the Jobs API refused the job.
        """
        self._call(
            f"submitting {submission_id}",
            lambda: self._client.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata=metadata,
                entrypoint_num_cpus=0,
            ),
            submission_id,
        )

    def _latest_attempt(self, sid: str) -> tuple[int, JobDetails | None]:
        """(attempt number, job) of the newest Ray job of this deliberation; (0, None) if none."""
        latest: JobDetails | None = None
        attempt = 0
        for n in range(MAX_ATTEMPTS):
            job_id = attempt_job_id(sid, n)
            found = self._find(job_id, sid)
            if found is None:
                break
            attempt, latest = n, found
        return attempt, latest

    def find_job(self, job_id: str) -> JobDetails | None:
        """The Ray job with this submission id, or None when the cluster has none.

        Raises:
            SubmissionError / DashboardUnreachable: the Jobs API failed.
        """
        return self._find(job_id, job_id)

    def _find(self, job_id: str, sid: str) -> JobDetails | None:
        return cast(
            "JobDetails | None", self._call("looking up the job", lambda: self._client.find_job(job_id), sid)
        )

    def _check_same_request(self, job: JobDetails, sid: str, request_hash: str) -> None:
        theirs = (job.metadata or {}).get("request_hash")
        if theirs != request_hash:
            raise SubmissionConflict(
                f"a job with submission_id {sid!r} exists with a different request "
                f"(request_hash {theirs!r}, ours {request_hash!r}); choose another --submission-id, "
                "or delete the old job",
                submission_id=sid,
                url=self.url,
            )

    def status(self, submission_id: str) -> JobStatus:
        return cast(
            JobStatus,
            self._call(
                "reading job status", lambda: self._client.get_job_status(submission_id), submission_id
            ),
        )

    def info(self, submission_id: str) -> JobDetails:
        return cast(
            JobDetails,
            self._call("reading job info", lambda: self._client.get_job_info(submission_id), submission_id),
        )

    def logs(self, submission_id: str) -> str:
        return str(
            self._call("reading job logs", lambda: self._client.get_job_logs(submission_id), submission_id)
        )

    def stop(self, submission_id: str) -> bool:
        return bool(
            self._call("stopping the job", lambda: self._client.stop_job(submission_id), submission_id)
        )

    def list_jobs(self) -> list[JobDetails]:
        return list(self._call("listing jobs", self._client.list_jobs))

    def delete(self, submission_id: str) -> bool:
        """Delete a terminal job (its record and logs)."""
        return bool(
            self._call("deleting the job", lambda: self._client.delete_job(submission_id), submission_id)
        )

    def alive_nodes(self) -> list[dict[str, Any]]:
        """The cluster's alive nodes from the State API (``node_id``, ``node_ip``, ``is_head_node`` ...).

        Raises:
            DashboardUnreachable / SubmissionError: the dashboard did not answer, or not with nodes.
        """
        resp = self._call(
            "listing nodes",
            lambda: self._client._do_request("GET", f"/api/v0/nodes?limit={NODES_LIMIT}"),
        )
        try:
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}")
            nodes = resp.json()["data"]["result"]["result"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SubmissionError(
                f"listing nodes: {self.url}/api/v0/nodes did not answer with nodes ({exc})", url=self.url
            ) from None
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def wait(
        self,
        submission_id: str,
        *,
        timeout_s: float,
        poll_s: float = 1.0,
        on_status: Callable[[JobStatus], None] | None = None,
        on_log_lines: Callable[[list[str]], None] | None = None,
    ) -> JobStatus:
        """Poll until the job is terminal; report status changes and new log lines.

        Raises:
            JobWaitTimeout: not terminal within ``timeout_s`` (the job keeps running).
        """
        deadline = time.monotonic() + timeout_s
        last: JobStatus | None = None
        seen_lines = 0
        while True:
            status = self.status(submission_id)
            if status != last and on_status:
                on_status(status)
            last = status
            if on_log_lines:
                try:
                    lines = self.logs(submission_id).splitlines()
                except DashboardUnreachable:
                    lines = []  # logs are a courtesy: a slow log read must not end the wait
                if len(lines) > seen_lines:
                    on_log_lines(lines[seen_lines:])
                    seen_lines = len(lines)
            if status.is_terminal():
                return status
            if time.monotonic() > deadline:
                raise JobWaitTimeout(
                    f"job {submission_id} is still {status.value} after {timeout_s:.0f} s; it keeps "
                    f"running (stop it with `ray job stop --address {self.url} {submission_id}`)",
                    submission_id=submission_id,
                    url=self.url,
                )
            time.sleep(poll_s)
