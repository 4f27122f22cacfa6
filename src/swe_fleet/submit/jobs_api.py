"""The Ray Jobs API of one cluster, bounded, talking only to the address given, errors mapped.

:class:`JobsApi` wraps Ray's ``JobSubmissionClient`` so that

- every HTTP request has a timeout (``request_timeout_s``; Ray's client has none), a job
  submission a longer one (:data:`SUBMIT_TIMEOUT_S`: a busy head records a job slowly);
- it talks to exactly the dashboard URL it is given (Ray's client lets ``RAY_ADDRESS`` and
  ``RAY_API_SERVER_ADDRESS`` replace it, as ``ray.init`` does);
- every HTTP failure is one of :mod:`swe_fleet.errors`: no answer within the bound is
  :class:`~swe_fleet.errors.DashboardUnreachable`; a refusal (Ray raises a bare
  ``RuntimeError`` for every HTTP error) or a refused token is
  :class:`~swe_fleet.errors.SubmissionError`; a URL that is no Jobs API is
  :class:`~swe_fleet.errors.AddressError`.

Every method takes Ray's ``job_id`` (the Jobs API's "submission id" of one attempt), never the
deliberation's ``submission_id`` (:mod:`swe_fleet.submit.request`). The cluster's alive nodes
are listed here (:meth:`JobsApi.alive_nodes`) and nowhere else.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import requests
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from swe_fleet.addresses import jobs_api_url
from swe_fleet.errors import AddressError, DashboardUnauthorized, DashboardUnreachable, SubmissionError
from swe_fleet.submit import DEFAULT_REQUEST_TIMEOUT_S

T = TypeVar("T")

#: Bound on listing the cluster's nodes through the State API.
NODES_LIMIT = 10000
#: What to do when the cluster refuses the token (not a secret: the variables' names).
_TOKEN_FIX = "Set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"  # noqa: S105

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


#: Bound on one job submission (its package uploads and the POST that records the job).
SUBMIT_TIMEOUT_S = 60.0


class _BoundedJobClient(JobSubmissionClient):  # type: ignore[misc]
    """Ray's client with a timeout on every HTTP request, talking to exactly the address given."""

    def __init__(self, address: str, *, headers: dict[str, str], request_timeout_s: float) -> None:
        self._request_timeout_s = request_timeout_s
        self._bound = threading.local()
        with _without_env(_RAY_ADDRESS_OVERRIDES):
            super().__init__(address=address, headers=headers)

    def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", getattr(self._bound, "timeout_s", self._request_timeout_s))
        return super()._do_request(method, endpoint, **kwargs)

    @contextlib.contextmanager
    def bounded_by(self, timeout_s: float) -> Iterator[None]:
        """This thread's requests in the block wait up to ``timeout_s`` each."""
        self._bound.timeout_s = timeout_s
        try:
            yield
        finally:
            del self._bound.timeout_s

    def find_job(self, job_id: str) -> JobDetails | None:
        """The job, or None on 404 (Ray's ``get_job_info`` raises for both alike)."""
        r = self._do_request("GET", f"/api/jobs/{job_id}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise SubmissionError(
                f"GET /api/jobs/{job_id} answered {r.status_code}: {r.text[:300]}",
                job_id=job_id,
                url=self._address,
            )
        return JobDetails(**r.json())


class JobsApi:
    """The Jobs API (and the State API's node list) of one cluster; see the module docstring."""

    def __init__(
        self,
        dashboard_url: str,
        *,
        auth_token: str | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        """Connect (bounded) and check the cluster answers as a Jobs API.

        Raises:
            AddressError: not an ``http(s)://`` dashboard URL, or not a Ray Jobs API there.
            DashboardUnreachable: no answer within ``request_timeout_s``.
            DashboardUnauthorized: the dashboard refused the auth token (missing or wrong).
        """
        self.url = jobs_api_url(dashboard_url)
        self._request_timeout_s = request_timeout_s
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
        except AuthenticationError as exc:
            raise DashboardUnauthorized(
                f"the Ray dashboard at {self.url} refused the request: {exc}. {_TOKEN_FIX}", url=self.url
            ) from None
        except RuntimeError as exc:  # Ray's version check: a 404 or an old Ray
            raise AddressError(
                f"{self.url} answered, but not as a Ray Jobs API ({str(exc)[:200]}); give the Ray "
                "dashboard's URL (http://HEAD:8265) of a Ray >= 2.x cluster",
                address=self.url,
                use="Jobs API",
            ) from None

    @property
    def server_ray_version(self) -> str | None:
        """The cluster's Ray version, as its dashboard said when we connected."""
        return getattr(self._client, "_server_ray_version", None)

    def _call(self, what: str, fn: Callable[[], T], job_id: str | None = None) -> T:
        """``fn()`` with every HTTP failure mapped to our errors (see the module docstring)."""
        try:
            return fn()
        except requests.exceptions.RequestException as exc:
            raise DashboardUnreachable(
                f"{what}: the Ray dashboard at {self.url} did not answer ({type(exc).__name__})",
                url=self.url,
                job_id=job_id,
            ) from None
        except AuthenticationError as exc:
            raise DashboardUnauthorized(
                f"{what}: the Ray dashboard at {self.url} refused the request: {exc}. {_TOKEN_FIX}",
                url=self.url,
                job_id=job_id,
            ) from None
        except RuntimeError as exc:  # Ray's client raises RuntimeError for every HTTP error
            raise SubmissionError(f"{what} failed: {str(exc)[:500]}", url=self.url, job_id=job_id) from None

    def submit_job(
        self, *, job_id: str, entrypoint: str, runtime_env: dict[str, Any], metadata: dict[str, str]
    ) -> None:
        """Submit one job with ``entrypoint_num_cpus=0`` (a driver must not hold a CPU its tasks need).

        Raises:
            DashboardUnreachable: no answer within the request bound.
            SubmissionError: the Jobs API refused the job (also: ``job_id`` is taken).
        """
        # Submitting uploads the job's packages and waits for the dashboard to record the job
        # and start its supervisor: on a busy head (a runtime_env being built, an engine
        # starting) that takes longer than a status read.
        with self._client.bounded_by(max(SUBMIT_TIMEOUT_S, self._request_timeout_s)):
            self._call(
                f"submitting {job_id}",
                lambda: self._client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env=runtime_env,
                    submission_id=job_id,
                    metadata=metadata,
                    entrypoint_num_cpus=0,
                ),
                job_id,
            )

    def find_job(self, job_id: str) -> JobDetails | None:
        """The Ray job ``job_id``, or None when the cluster has none.

        Raises:
            SubmissionError / DashboardUnreachable: the Jobs API failed.
        """
        return self._call("looking up the job", lambda: self._client.find_job(job_id), job_id)

    def status(self, job_id: str) -> JobStatus:
        """The job's status (raises SubmissionError when there is no such job)."""
        return cast(
            JobStatus, self._call("reading job status", lambda: self._client.get_job_status(job_id), job_id)
        )

    def info(self, job_id: str) -> JobDetails:
        """The job's details (raises SubmissionError when there is no such job)."""
        return cast(
            JobDetails, self._call("reading job info", lambda: self._client.get_job_info(job_id), job_id)
        )

    def logs(self, job_id: str) -> str:
        """The job's whole log so far."""
        return str(self._call("reading job logs", lambda: self._client.get_job_logs(job_id), job_id))

    def stop(self, job_id: str) -> bool:
        """Ask Ray to stop the job; False when it was no longer running."""
        return bool(self._call("stopping the job", lambda: self._client.stop_job(job_id), job_id))

    def delete(self, job_id: str) -> bool:
        """Delete a terminal job (its record and logs)."""
        return bool(self._call("deleting the job", lambda: self._client.delete_job(job_id), job_id))

    def list_jobs(self) -> list[JobDetails]:
        """Every job the cluster knows."""
        return list(self._call("listing jobs", self._client.list_jobs))

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
