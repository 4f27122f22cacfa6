"""One vLLM engine in a Ray actor, serving many ``chat`` calls at once (continuous batching).

The actor is an async Ray actor: every ``chat`` call (a phase's shard, or one task's phase in a
pipelined council) hands its requests to one **step thread** that owns the engine. Between two
engine steps the thread admits whatever arrived, so requests of different calls run in the same
batch as soon as they come; each call returns when its own requests are done, not when the
whole engine drains.

Why not ``AsyncLLM``: vLLM's async engine always runs its engine core in a child process
(``make_async_mp_client``). Measured here, that start takes 15 s where the in-process engine
takes 4 s, the child shares the actor's cores, and a SIGKILLed actor (``ray.kill``, a lost
node) can leave the child behind. The documented ``LLM.enqueue_chat`` + ``LLMEngine.step``
pair gives the same continuous batching in the actor's own process, with ``LLM.chat``'s chat
rendering unchanged.

A failure inside ``step`` is fatal for the replica: every call in flight and every later call
gets it (the generator turns it into :class:`~swe_fleet.errors.LLMError`). A request that does
not fit the context fails alone, naming the limit. A cancelled call's requests are aborted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from swe_fleet.llm.base import ChatRequest, Completion, TokenChoice
from swe_fleet.llm.cpu_threads import apply_env_defaults, cpu_engine_env
from swe_fleet.spec import ModelSpec

#: vLLM's engine core inside the actor's own process instead of a spawned child process. The
#: child re-imports torch and vLLM and handshakes with its parent: measured here, ``LLM(...)``
#: took 21 s with the child and 4 s without (same model, same 2 cores), and generated ~10% more
#: tokens/s (the actor and the child no longer share the cores). Killing the actor leaves no orphan.
IN_PROCESS_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
#: Seconds between two samples of an unchanged running batch's size (:meth:`VLLMEngine.timeline`).
TIMELINE_STEP_S = 0.25


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


class EngineStopped(RuntimeError):
    """This replica's engine failed (or was closed) and serves nothing more: the generator moves
    the call's requests to the replicas still serving."""


@dataclass
class _Call:
    """One ``chat`` call inside the step thread: its results fill in as requests finish."""

    batch: list[ChatRequest]
    done: concurrent.futures.Future[list[Completion]]
    results: list[Completion | None] = field(default_factory=list)
    #: vLLM's request id (the one its outputs carry) -> position in ``batch``, while running.
    running: dict[str, int] = field(default_factory=dict)
    #: vLLM's internal ids of the same requests (what aborting them takes).
    internal: list[str] = field(default_factory=list)


@dataclass
class _Abort:
    call: _Call


class VLLMEngine:
    """Holds one ``vllm.LLM`` and the step thread that drives it. Used as an async Ray actor
    (see :class:`~swe_fleet.llm.engine.EngineGenerator`); ``chat`` may be called concurrently."""

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
        #: (wall time, requests in the engine's running batch) at every change, and every
        #: TIMELINE_STEP_S while busy: how full the batch stayed (statistics for benchmarks,
        #: read with :meth:`timeline`).
        self._timeline: list[tuple[float, int]] = []
        self._inbox: queue.SimpleQueue[_Call | _Abort | None] = queue.SimpleQueue()
        self._by_request: dict[str, _Call] = {}
        self._failure: BaseException | None = None
        #: Orders "fail everything waiting" against a call joining the inbox (none is left behind).
        self._failing = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"vllm-steps-{replica}", daemon=True)
        self._thread.start()

    def ready(self) -> dict[str, Any]:
        """Returns once the engine is loaded, with its start time."""
        return {"replica": self.replica, "start_seconds": self.start_seconds}

    async def chat(self, batch: list[ChatRequest]) -> list[Completion]:
        """Complete ``batch``; order is kept. Its requests join the engine's running batch at the
        next step, alongside those of every other call in flight.

        A request whose prompt plus ``max_tokens`` does not fit the context gets a
        :class:`Completion` with ``error`` naming the limit; the rest still run.

        Raises:
            EngineStopped: the engine failed (now or earlier); the replica serves nothing more.
            RuntimeError: vLLM refused this call's requests (the engine goes on).
        """
        self.calls += 1
        call = _Call(batch=list(batch), done=concurrent.futures.Future())
        with self._failing:
            if self._failure is not None:
                raise EngineStopped(f"vLLM engine of replica {self.replica} failed earlier: {self._failure}")
            self._inbox.put(call)
        try:
            return await asyncio.wrap_future(call.done)
        except asyncio.CancelledError:
            self._inbox.put(_Abort(call))  # the caller gave up: free the engine of its requests
            raise

    def call_count(self) -> int:
        """How many ``chat`` calls this replica served."""
        return self.calls

    def timeline(self) -> list[tuple[float, int]]:
        """(wall time, requests in flight) samples taken while the engine was busy."""
        return list(self._timeline)

    def close(self) -> None:
        """Stop the step thread (calls still waiting fail); the process may then exit."""
        self._inbox.put(None)
        self._thread.join(timeout=30)

    # ---- the step thread: the only one that touches the engine and the tokenizer ------------

    def _serve(self) -> None:
        engine = self.llm.llm_engine
        items: list[_Call | _Abort | None] = []
        try:
            while True:
                # Idle: block until a call comes. Busy: admit what arrived, then step.
                items = [] if engine.has_unfinished_requests() else [self._inbox.get()]
                while True:
                    try:
                        items.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                for item in items:
                    if item is None:
                        raise RuntimeError("the engine was closed")
                    if isinstance(item, _Abort):
                        self._abort(item.call)
                    else:
                        self._admit_or_refuse(item)
                if engine.has_unfinished_requests():
                    now, running = time.time(), len(self._by_request)
                    last = self._timeline[-1] if self._timeline else (0.0, -1)
                    if running != last[1] or now - last[0] >= TIMELINE_STEP_S:
                        self._timeline.append((round(now, 3), running))
                    for out in engine.step():
                        if out.finished:
                            self._finish(out)
        except BaseException as exc:
            with self._failing:
                self._failure = exc
                self._fail_all(exc, [i for i in items if isinstance(i, _Call)])

    def _admit_or_refuse(self, call: _Call) -> None:
        """Admit ``call``'s requests; if vLLM refuses them (e.g. a parameter it does not take),
        that call fails alone and the engine goes on."""
        try:
            self._admit(call)
        except Exception as exc:
            for request_id in call.running:
                self._by_request.pop(request_id, None)
            call.running.clear()
            _settle(call.done, error=RuntimeError(f"vLLM refused the requests: {type(exc).__name__}: {exc}"))

    def _admit(self, call: _Call) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        call.results = [None] * len(call.batch)
        conversations: list[list[dict[str, str]]] = []
        params: list[SamplingParams] = []
        positions: list[int] = []
        for i, req in enumerate(call.batch):
            messages = [dict(m) for m in req.messages]
            prompt_tokens = self._count_prompt_tokens(messages)
            if prompt_tokens + req.max_tokens > self.max_model_len:
                call.results[i] = Completion(
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
            call.internal = self.llm.enqueue_chat(conversations, sampling_params=params, use_tqdm=False)
            for internal, pos in zip(call.internal, positions, strict=True):
                request_id = _external_id(internal)
                call.running[request_id] = pos
                self._by_request[request_id] = call
        self._maybe_done(call)

    def _finish(self, out: Any) -> None:
        call = self._by_request.pop(out.request_id, None)
        if call is None:
            return  # aborted meanwhile
        first = out.outputs[0]
        call.results[call.running.pop(out.request_id)] = Completion(
            text=first.text,
            prompt_tokens=len(out.prompt_token_ids or []),
            output_tokens=len(first.token_ids),
            finish_reason=first.finish_reason,
            tokens=_token_choices(first.token_ids, first.logprobs),
        )
        self._maybe_done(call)

    @staticmethod
    def _maybe_done(call: _Call) -> None:
        if not call.running:
            _settle(call.done, result=[r for r in call.results if r is not None])

    def _abort(self, call: _Call) -> None:
        running = set(call.running)
        for request_id in running:
            self._by_request.pop(request_id, None)
        call.running.clear()
        ids = [i for i in call.internal if _external_id(i) in running]
        if ids:
            self.llm.llm_engine.abort_request(ids, internal=True)

    def _fail_all(self, exc: BaseException, taken: list[_Call]) -> None:
        calls = {id(c): c for c in [*self._by_request.values(), *taken]}
        self._by_request.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Call):
                calls[id(item)] = item
        for call in calls.values():
            _settle(call.done, error=EngineStopped(f"vLLM engine failed: {type(exc).__name__}: {exc}"))

    def _count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        # transformers 5 returns a BatchEncoding unless asked for plain ids.
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return len(ids)


def _settle(
    done: concurrent.futures.Future[list[Completion]],
    *,
    result: list[Completion] | None = None,
    error: BaseException | None = None,
) -> None:
    """Resolve ``done`` unless it already is: its waiter may cancel it from the event loop's
    thread at any moment (the caller gave up), and that must not reach the step thread."""
    try:
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result or [])
    except concurrent.futures.InvalidStateError:
        pass  # cancelled meanwhile: its requests are being aborted


def _external_id(internal: str) -> str:
    """The request id vLLM's outputs carry, from the internal one ``enqueue_chat`` returns: vLLM
    appends ``-`` and 8 random characters to the id it was given (``LLM``'s counter: digits
    only), unless ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION`` is set."""
    return internal.rsplit("-", 1)[0]


def _token_choices(token_ids: Any, logprobs: Any) -> tuple[TokenChoice, ...]:
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
