"""The engine backend moves the shard of a lost replica to the replicas still serving.

Replica handles are stand-ins here (the real thing, a node cut off mid-job, is the netns
partition test); what is checked is the policy: which replica gets which requests, and when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import ray.exceptions

from swe_fleet.errors import LLMError
from swe_fleet.llm import engine
from swe_fleet.llm.base import BatchStats, ChatRequest, Completion
from swe_fleet.llm.engine import EngineGenerator
from swe_fleet.spec import ModelSpec


def unavailable() -> BaseException:
    return ray.exceptions.ActorUnavailableError("The actor is restarting", None)


def died() -> BaseException:
    return ray.exceptions.ActorDiedError()


class FakeReplica:
    """``.chat.remote(batch)``: answers each request with its own prompt, or raises what
    ``script`` says for that call (one entry per call; afterwards it answers)."""

    def __init__(self, name: str, script: list[Callable[[], BaseException]] | None = None) -> None:
        self.name = name
        self.script = list(script or [])
        self.calls: list[list[str]] = []
        self.chat = self

    def remote(self, batch: list[ChatRequest], client: str = "", max_inflight: int | None = None) -> Any:
        prompts = [r.messages[-1]["content"] for r in batch]
        self.calls.append(prompts)
        failure = self.script.pop(0)() if self.script else None

        async def answer() -> list[Completion]:
            await asyncio.sleep(0)
            if failure is not None:
                raise failure
            return [Completion(text=f"{self.name}:{p}") for p in prompts]

        return answer()


def generator(*replicas: FakeReplica, batch_timeout_s: float = 30) -> EngineGenerator:
    gen = EngineGenerator.__new__(EngineGenerator)
    gen.model = ModelSpec(replicas=len(replicas), batch_timeout_s=batch_timeout_s)
    gen.stats = BatchStats()
    gen.replicas = list(replicas)
    gen._dead = set()
    gen._lost = set()
    gen.shared = False
    gen.client = "sub-1"
    gen._reacquired = 0
    gen.pool = ""
    gen._max_inflight = None
    return gen


def batch(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=({"role": "user", "content": f"q{i}"},), max_tokens=8) for i in range(n)]


async def test_shard_of_an_unavailable_replica_runs_on_the_other_and_order_is_kept() -> None:
    """Replica 1 unavailable (its node was lost): its half reruns on replica 0; every answer
    comes back in request order; the next batch goes to replica 0 only."""
    a, b = FakeReplica("a"), FakeReplica("b", [unavailable])
    gen = generator(a, b)
    out = await gen.generate(batch(4))
    assert [c.text for c in out] == ["a:q0", "a:q1", "a:q2", "a:q3"]
    assert a.calls == [["q0", "q1"], ["q2", "q3"]] and b.calls == [["q2", "q3"]]
    await gen.generate(batch(2))
    assert len(b.calls) == 1 and a.calls[-1] == ["q0", "q1"]
    assert gen.stats.per_replica_calls == {0: 3}


async def test_only_replica_unavailable_is_tried_again_after_a_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """One replica, restarting after a crash: the batch waits a pause and succeeds on it."""
    monkeypatch.setattr(engine, "REPLICA_RETRY_PAUSE_S", 0.01)
    only = FakeReplica("a", [unavailable, unavailable])
    out = await generator(only).generate(batch(2))
    assert [c.text for c in out] == ["a:q0", "a:q1"] and len(only.calls) == 3


async def test_every_replica_dead_for_good_is_an_llm_error_at_once() -> None:
    """Restarts used up on every replica (ActorDiedError): LLMError now, not at the timeout."""
    gen = generator(FakeReplica("a", [died]), FakeReplica("b", [died]))
    with pytest.raises(LLMError, match="every vLLM engine replica died"):
        await gen.generate(batch(2))


async def test_replica_that_never_comes_back_ends_at_the_batch_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica unavailable on every call: LLMError naming model.batch_timeout_s, bounded."""
    monkeypatch.setattr(engine, "REPLICA_RETRY_PAUSE_S", 0.01)
    forever = FakeReplica("a", [unavailable] * 10_000)
    with pytest.raises(LLMError, match="batch_timeout_s"):
        await generator(forever, batch_timeout_s=0.2).generate(batch(1))


async def test_a_vllm_error_inside_the_actor_fails_the_batch() -> None:
    """An error raised by vLLM itself (not a lost actor) is not retried: LLMError."""
    gen = generator(FakeReplica("a", [lambda: ray.exceptions.RayTaskError("chat", "tb", ValueError("x"))]))
    with pytest.raises(LLMError, match="failed on a batch"):
        await gen.generate(batch(1))


async def test_a_replica_whose_engine_stopped_is_not_called_again_and_its_shard_moves() -> None:
    """A replica answers that its engine failed inside (EngineStopped, as Ray hands it back:
    wrapped in a RayTaskError): its half runs on the other replica, it gets no more work, and
    when no replica is left the batch is an LLMError at once."""
    from swe_fleet.llm.engine_actor import EngineStopped

    def stopped() -> BaseException:
        return ray.exceptions.RayTaskError(
            "chat", "tb", EngineStopped("vLLM engine failed: boom")
        ).as_instanceof_cause()

    a, b = FakeReplica("a"), FakeReplica("b", [stopped])
    gen = generator(a, b)
    out = await gen.generate(batch(4))
    assert [c.text for c in out] == ["a:q0", "a:q1", "a:q2", "a:q3"]
    await gen.generate(batch(2))
    assert len(b.calls) == 1 and gen.serving_replicas() == [0]
    with pytest.raises(LLMError, match="every vLLM engine replica died"):
        await generator(FakeReplica("c", [stopped])).generate(batch(1))


async def test_a_shared_replica_stopped_for_good_is_created_anew_and_serves_the_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shared pool's replica that stopped (idle time out, ``engine down``) between two calls:
    the generator looks it up again (which creates it), skips it while it loads, and the shard
    runs on the other replica; a per-job engine's replica that died is dead for good."""
    fresh = FakeReplica("fresh")
    created: list[tuple[int, object]] = []

    def engine_replica(model: ModelSpec, replica: int, *, runtime_env: object = None) -> FakeReplica:
        created.append((replica, runtime_env))
        return fresh

    monkeypatch.setattr(engine, "engine_replica", engine_replica)
    a, b = FakeReplica("a"), FakeReplica("b", [died])
    gen = generator(a, b)
    gen.shared, gen._runtime_env = True, None
    out = await gen.generate(batch(4))
    assert [c.text for c in out] == ["a:q0", "a:q1", "a:q2", "a:q3"]
    assert created == [(1, None)] and gen.replicas[1] is fresh and gen.serving_replicas() == [0]
    assert a.calls[-1] == ["q2", "q3"]  # the stopped replica's shard, on the other one
    per_job = generator(FakeReplica("c"), FakeReplica("d", [died]))
    await per_job.generate(batch(2))
    assert 1 in per_job._dead and len(created) == 1


async def test_a_shared_replica_whose_engine_failed_is_called_again_once_it_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A shared pool's replica answers EngineStopped (its process is about to end and Ray
    starts it again): with no other replica, the shard waits a pause and runs on it once it
    serves again, instead of failing the council."""
    from swe_fleet.llm.engine_actor import EngineStopped

    monkeypatch.setattr(engine, "REPLICA_RETRY_PAUSE_S", 0.01)
    only = FakeReplica("a", [lambda: EngineStopped("vLLM engine failed: boom")] * 2)
    gen = generator(only)
    gen.shared = True
    out = await gen.generate(batch(2))
    assert [c.text for c in out] == ["a:q0", "a:q1"] and len(only.calls) == 3
    assert gen.serving_replicas() == [0] and not gen._dead


async def test_a_shared_replica_whose_engine_keeps_failing_on_a_batch_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request that makes the engine fail every time: after MAX_ENGINE_STOPS answers the
    replica counts as dead for this council, and the batch is an LLMError (not a crash loop)."""
    from swe_fleet.llm.engine_actor import EngineStopped

    monkeypatch.setattr(engine, "REPLICA_RETRY_PAUSE_S", 0.01)
    only = FakeReplica("a", [lambda: EngineStopped("vLLM engine failed: boom")] * 10)
    gen = generator(only)
    gen.shared = True
    with pytest.raises(LLMError, match="every vLLM engine replica died"):
        await gen.generate(batch(1))
    assert len(only.calls) == engine.MAX_ENGINE_STOPS + 1


class _Starting:
    """``.ready.remote()``: raises the next of ``failures``, then answers."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.ready = self
        self.asked = 0

    def remote(self) -> Any:
        self.asked += 1
        failure = self.failures.pop(0) if self.failures else None

        async def answer() -> dict[str, Any]:
            if failure is not None:
                raise failure
            return {"replica": 0, "start_seconds": 1.0, "pool": "p"}

        return answer()


async def test_a_shared_replica_whose_engine_failed_to_load_is_not_created_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At start, a replica that stopped just now (idle) is created anew and waited for; one whose
    engine could not load (its creation failed: a model that is not there) fails the start at
    once: creating it again would fail the same way, each time after loading vLLM."""
    fresh = _Starting([])
    monkeypatch.setattr(engine, "engine_replica", lambda model, replica, runtime_env=None: fresh)
    stopped = _Starting([ray.exceptions.ActorDiedError()])
    gen = generator(FakeReplica("x"))
    gen.shared, gen._runtime_env, gen.replicas = True, None, [stopped]
    await gen.start(timeout_s=5)
    assert gen.replicas == [fresh] and fresh.asked == 1

    init_failed = ray.exceptions.ActorDiedError()
    init_failed._actor_init_failed = True
    broken = _Starting([init_failed])
    gen = generator(FakeReplica("x"))
    gen.shared, gen._runtime_env, gen.replicas = True, None, [broken]
    with pytest.raises(LLMError, match="vLLM engine failed to start"):
        await gen.start(timeout_s=5)
    assert gen.replicas == [broken] and gen._reacquired == 0
