"""swe-fleet: multi-agent LLM deliberations ("councils") as Ray Jobs.

Every phase is one vLLM batch; every agent response is published to NATS JetStream
(``agent.response.completed``) with its idempotency key as ``Nats-Msg-Id``.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("swe-fleet")
except PackageNotFoundError:  # shipped as py_modules to a cluster: no dist metadata there
    __version__ = "0.1.0"

from swe_fleet.addresses import ClusterAddresses, Role, jobs_api_url, ray_client_url
from swe_fleet.dispatch.requests import CouncilRequested
from swe_fleet.errors import (
    AddressError,
    CouncilIncomplete,
    DashboardUnreachable,
    DispatchError,
    DispatchTimeout,
    InvalidRequest,
    JobWaitTimeout,
    LLMError,
    LocalStackError,
    ModelError,
    NatsUnreachable,
    NodeConfigError,
    NodeStartError,
    NoHeadFound,
    OutboxError,
    OutboxWritten,
    PreflightFailed,
    PublishError,
    RequestRejected,
    SpecError,
    StreamConfigMismatch,
    SubmissionConflict,
    SubmissionError,
    SweFleetError,
)
from swe_fleet.events import (
    AgentResponseCompleted,
    AgentResponseFailed,
    CouncilJobFailed,
    CouncilJobStatus,
    DeliberationCompleted,
    decode_event,
)
from swe_fleet.spec import AgentSpec, CouncilSpec, ModelSpec, PublishSpec, TaskSpec

if TYPE_CHECKING:
    from swe_fleet.dispatch.producer import CouncilTicket, request_council

#: Imported on first use: they need nats-py, and ``import swe_fleet`` must not, so that a node
#: without it gets a preflight row naming ``nats`` rather than a failed import of swe_fleet.
_LAZY = {"CouncilTicket": "swe_fleet.dispatch.producer", "request_council": "swe_fleet.dispatch.producer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swe_fleet' has no attribute {name!r}")


__all__ = [
    "AddressError",
    "AgentResponseCompleted",
    "AgentResponseFailed",
    "AgentSpec",
    "ClusterAddresses",
    "CouncilIncomplete",
    "CouncilJobFailed",
    "CouncilJobStatus",
    "CouncilRequested",
    "CouncilSpec",
    "CouncilTicket",
    "DashboardUnreachable",
    "DeliberationCompleted",
    "DispatchError",
    "DispatchTimeout",
    "InvalidRequest",
    "JobWaitTimeout",
    "LLMError",
    "LocalStackError",
    "ModelError",
    "ModelSpec",
    "NatsUnreachable",
    "NoHeadFound",
    "NodeConfigError",
    "NodeStartError",
    "OutboxError",
    "OutboxWritten",
    "PreflightFailed",
    "PublishError",
    "PublishSpec",
    "RequestRejected",
    "Role",
    "SpecError",
    "StreamConfigMismatch",
    "SubmissionConflict",
    "SubmissionError",
    "SweFleetError",
    "TaskSpec",
    "__version__",
    "decode_event",
    "jobs_api_url",
    "ray_client_url",
    "request_council",
]
