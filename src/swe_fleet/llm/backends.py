"""The spec's backend, built: vLLM engine actors, or a client of a vLLM server."""

from __future__ import annotations

from swe_fleet.llm.base import Generator
from swe_fleet.spec import CouncilSpec


def build_generator(spec: CouncilSpec, client: str = "") -> Generator:
    """The :class:`~swe_fleet.llm.base.Generator` ``spec.backend`` names (not started yet).

    The engine backend needs a Ray connection (``ray.init`` first); both import their heavy
    dependencies only here, so a client never loads vLLM or Ray for a spec it only validates.
    ``client`` (the council's submission id) is who the engine pool's replicas take turns with.
    """
    if spec.backend == "server":
        from swe_fleet.llm.server import ServerGenerator, ServerRetryPolicy

        return ServerGenerator(
            spec.server.url,
            spec.model.name,
            concurrency=spec.server.concurrency,
            request_timeout_s=spec.server.request_timeout_s,
            policy=ServerRetryPolicy(
                max_attempts=spec.server.retry_attempts, budget_s=spec.server.retry_budget_s
            ),
        )
    from swe_fleet.llm.engine import EngineGenerator

    return EngineGenerator(spec.model, client=client)
