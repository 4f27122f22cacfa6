"""The cache of passing preflight results.

Passing results are cached under ``~/.cache/swe-fleet/preflight/`` (``SWE_FLEET_CACHE`` moves
it), keyed on the dashboard URL, the set of alive node ids (a new node invalidates it), the
runtime_env's fingerprint (:func:`swe_fleet.submit.runtime_env.runtime_env_fingerprint`) and
what the checks expect (pins, versions, NATS and server URLs, GPUs, disk); entries expire after
an hour. Failures are never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from swe_fleet.llm.model import cache_dir
from swe_fleet.preflight.node_check import Check, NodeExpectations
from swe_fleet.submit.jobs_api import JobsApi
from swe_fleet.submit.runtime_env import runtime_env_fingerprint

#: How long a passing preflight stays good for the same cluster and runtime_env.
CACHE_MAX_AGE_S = 3600.0


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
    jobs: JobsApi, runtime_env: dict[str, Any], expectations: NodeExpectations
) -> str | None:
    """:func:`preflight_key` of the cluster ``jobs`` talks to, with the nodes alive now; None when
    the dashboard lists no alive node yet (a head that just started): a result is then neither
    looked up nor stored, since it would be filed under no nodes at all.

    Raises:
        DashboardUnreachable / SubmissionError: the nodes could not be listed.
    """
    node_ids = [str(n["node_id"]) for n in jobs.alive_nodes()]
    if not node_ids:
        return None
    return preflight_key(jobs.url, node_ids, runtime_env, expectations)


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
