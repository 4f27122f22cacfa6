"""One vLLM engine in a Ray actor, serving many ``chat`` calls at once (continuous batching).

The actor is an async Ray actor: every ``chat`` call (a phase's shard, or one task's phase in a
pipelined council) hands its requests to one **step thread** that owns the engine. Between two
engine steps the thread admits whatever arrived, so requests of different calls (and of
different councils, on a shared pool's replica) run in the same batch as soon as there is room;
councils take turns for that room (:mod:`.admission`); each call returns when its own requests
are done, not when the whole engine drains.

Why not ``AsyncLLM``: vLLM's async engine always runs its engine core in a child process
(``make_async_mp_client``). Measured here, that start takes 15 s where the in-process engine
takes 4 s, the child shares the actor's cores, and a SIGKILLed actor (``ray.kill``, a lost
node) can leave the child behind. The documented ``LLM.enqueue_chat`` + ``LLMEngine.step``
pair gives the same continuous batching in the actor's own process, with ``LLM.chat``'s chat
rendering unchanged.

A failure inside ``step`` is fatal for the replica: every call in flight and every later call
gets :class:`EngineStopped` (the generator moves them to the replicas still serving); a shared
pool's replica then ends its process and Ray starts it again with a fresh engine. A request that does
not fit the context fails alone, naming the limit. A cancelled call's requests are aborted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from swe_fleet.llm.admission import FairAdmission
from swe_fleet.llm.base import ChatRequest, Completion
from swe_fleet.llm.cpu_threads import apply_env_defaults
from swe_fleet.llm.engine_options import engine_env, llm_options
from swe_fleet.llm.vllm_io import completion, count_prompt_tokens, external_id, sampling_params
from swe_fleet.spec import ModelSpec

#: Seconds between two samples of an unchanged running batch's size (:meth:`VLLMEngine.timeline`).
TIMELINE_STEP_S = 0.25
#: Seconds a shared replica whose engine failed waits (its calls get their EngineStopped answer)
#: before its process ends and Ray restarts it.
RESTART_AFTER_FAILURE_S = 2.0
#: Samples a replica keeps of its running batch (a few hours of steady load), and councils it
#: keeps counts for: a shared replica lives long, its memory must not grow with it.
TIMELINE_SAMPLES = 50_000
CLIENTS_KEPT = 10_000


class _Closed(RuntimeError):
    """:meth:`VLLMEngine.close` was called: the engine stops on purpose."""


class EngineStopped(RuntimeError):
    """This replica's engine failed (or was closed, or a shared replica is stopping) and serves
    nothing more in this process: the generator moves the call's requests to the replicas still
    serving (a shared replica comes back: restarted by Ray, or created anew)."""


@dataclass(eq=False)
class _Call:
    """One ``chat`` call inside the step thread: its results fill in as requests finish."""

    batch: list[ChatRequest]
    done: concurrent.futures.Future[list[Completion]]
    #: Who asked (a council's submission id): admission takes turns between clients.
    client: str = ""
    #: Bound on this client's requests running at once (None: the engine's capacity).
    max_inflight: int | None = None
    results: list[Completion | None] = field(default_factory=list)
    #: Requests not answered yet (waiting for admission or running).
    open: int = 0
    #: vLLM's request id (the one its outputs carry) -> position in ``batch``, while running.
    running: dict[str, int] = field(default_factory=dict)
    #: vLLM's internal id of each running request (what aborting it takes).
    internal: dict[str, str] = field(default_factory=dict)


@dataclass
class _Abort:
    call: _Call


class VLLMEngine:
    """Holds one ``vllm.LLM`` and the step thread that drives it. Used as an async Ray actor
    (see :class:`~swe_fleet.llm.engine.EngineGenerator`); ``chat`` may be called concurrently,
    by one council or by many (a shared pool's replica, :mod:`swe_fleet.llm.pool`).

    With ``idle_timeout_s`` (a shared pool's replica), the actor stops itself, for good, once no
    call has been open for that long.
    """

    #: Set by the step thread once it has built the engine, before ``__init__`` returns.
    llm: Any
    tokenizer: Any
    _admission: FairAdmission[tuple[_Call, int]]

    def __init__(
        self, model: ModelSpec, replica: int, *, idle_timeout_s: float | None = None, pool: str = ""
    ) -> None:
        # Before vLLM is imported; a runtime_env's env_vars or the node's environment still win.
        apply_env_defaults(engine_env(model, os.sched_getaffinity(0)), os.environ)
        from swe_fleet.llm.model import resolve_model

        self.replica = replica
        self.pool = pool
        self.model_name = model.name
        self.calls = 0
        self.calls_by_client: dict[str, int] = {}
        #: Requests taken out before their end: their caller gave up (a council cancelled or
        #: stopped), or vLLM refused their call.
        self.aborted_by_client: dict[str, int] = {}
        #: (wall time, requests in the engine's running batch) at every change, and every
        #: TIMELINE_STEP_S while busy: how full the batch stayed (statistics for benchmarks,
        #: read with :meth:`timeline`).
        self._timeline: deque[tuple[float, int]] = deque(maxlen=TIMELINE_SAMPLES)
        self._inbox: queue.SimpleQueue[_Call | _Abort | None] = queue.SimpleQueue()
        self._by_request: dict[str, _Call] = {}
        self._failure: BaseException | None = None
        #: Orders "fail everything waiting" against a call joining the inbox (none is left behind).
        self._failing = threading.Lock()
        self._open_calls = 0
        self._last_activity = time.monotonic()
        #: Orders a call coming in against the idle stop deciding there is none.
        self._activity = threading.Lock()
        self._stopping = False
        self.idle_timeout_s = idle_timeout_s
        self.max_model_len = model.max_model_len
        # The step thread builds the engine it steps: vLLM's CPU worker binds the OpenMP threads
        # of the thread that builds the engine, and another thread stepping it gets an unbound
        # team of its own. Measured here: 20% fewer output tokens/s (255 against 314 on the
        # pipeline benchmark's council).
        path = resolve_model(model.name)
        started = time.monotonic()
        loaded: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._own_engine, args=(path, llm_options(model), loaded),
            name=f"vllm-steps-{replica}", daemon=True,
        )  # fmt: skip
        self._thread.start()
        loaded.result()  # what building the engine raised, raised here
        self.start_seconds = time.monotonic() - started
        self.started_at = time.time()
        if idle_timeout_s is not None:
            threading.Thread(target=self._stop_when_idle, name="idle-stop", daemon=True).start()

    def ready(self) -> dict[str, Any]:
        """Returns once the engine is loaded, with its start time."""
        self._last_activity = time.monotonic()
        return {"replica": self.replica, "start_seconds": self.start_seconds, "pool": self.pool}

    async def chat(
        self, batch: list[ChatRequest], client: str = "", max_inflight: int | None = None
    ) -> list[Completion]:
        """Complete ``batch``; order is kept. Its requests join the engine's running batch as
        soon as there is room, alongside those of every other call in flight; ``client`` (a
        council's submission id) takes turns with the other clients, with at most
        ``max_inflight`` of its requests running at once (:class:`FairAdmission`).

        A request whose prompt plus ``max_tokens`` does not fit the context gets a
        :class:`Completion` with ``error`` naming the limit; the rest still run.

        Raises:
            EngineStopped: the engine failed (now or earlier), or the idle replica is stopping.
            RuntimeError: vLLM refused this call's requests (the engine goes on).
        """
        with self._activity:
            if self._stopping:
                raise EngineStopped(f"replica {self.replica} of pool {self.pool!r} is stopping (idle)")
            self._open_calls += 1
            self._last_activity = time.monotonic()
        self.calls += 1
        _count(self.calls_by_client, client)
        call = _Call(batch=list(batch), done=concurrent.futures.Future(), client=client,
                     max_inflight=max_inflight)  # fmt: skip
        try:
            with self._failing:
                if self._failure is not None:
                    raise EngineStopped(
                        f"vLLM engine of replica {self.replica} failed earlier: {self._failure}"
                    )
                self._inbox.put(call)
            try:
                return await asyncio.wrap_future(call.done)
            except asyncio.CancelledError:
                self._inbox.put(_Abort(call))  # the caller gave up: free the engine of its requests
                raise
        finally:
            with self._activity:
                self._open_calls -= 1
                self._last_activity = time.monotonic()

    def call_count(self, client: str | None = None) -> int:
        """How many ``chat`` calls this replica served (of ``client`` only, when given)."""
        return self.calls if client is None else self.calls_by_client.get(client, 0)

    def timeline(self, since: float = 0.0) -> list[tuple[float, int]]:
        """(wall time, requests in flight) samples taken while the engine was busy, from ``since``."""
        return [sample for sample in self._timeline if sample[0] >= since]

    def status(self) -> dict[str, Any]:
        """What ``swe-fleet engine status`` shows of this replica."""
        import ray

        return {
            "pool": self.pool,
            "replica": self.replica,
            "model": self.model_name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "running": dict(self._admission.running_by_client()),
            "waiting": dict(self._admission.waiting_by_client()),
            "open_calls": self._open_calls,
            "calls": self.calls,
            "clients": len(self.calls_by_client),
            "aborted": dict(self.aborted_by_client),
            "idle_s": 0.0 if self._open_calls else round(time.monotonic() - self._last_activity, 1),
            "idle_timeout_s": self.idle_timeout_s,
            "up_s": round(time.time() - self.started_at, 1),
            "start_seconds": round(self.start_seconds, 2),
            "stopped": None if self._failure is None else str(self._failure)[:300],
        }

    def close(self) -> None:
        """Stop the step thread (calls still waiting fail); the process may then exit."""
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def _stop_when_idle(self) -> None:
        """A shared replica's end: once no call has been open for ``idle_timeout_s``, the actor
        kills itself without restart (its name is free again; the next council creates it anew)."""
        import ray

        assert self.idle_timeout_s is not None
        while True:
            time.sleep(min(1.0, self.idle_timeout_s / 4))
            with self._activity:
                idle = time.monotonic() - self._last_activity
                self._stopping = self._open_calls == 0 and idle >= self.idle_timeout_s
            if self._stopping:  # from now on, a call that comes is told so (and looks again)
                print(f"swe-fleet engine pool {self.pool!r} replica {self.replica}: idle for "
                      f"{self.idle_timeout_s:g} s, stopping", flush=True)  # fmt: skip
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return

    # ---- the step thread: the only one that touches the engine and the tokenizer ------------

    def _own_engine(
        self, path: str, options: dict[str, Any], loaded: concurrent.futures.Future[None]
    ) -> None:
        """Build the engine (``loaded`` says when, or why it failed), then serve."""
        # Imported here: the driver process never needs vLLM, only the engine's node does.
        from vllm import LLM

        try:
            self.llm = LLM(model=path, **options)
            self.tokenizer = self.llm.get_tokenizer()
            #: vLLM queues what it cannot run first come, first served: admit no more than it runs.
            capacity = getattr(getattr(self.llm.llm_engine, "vllm_config", None), "scheduler_config", None)
            self._admission = FairAdmission(int(getattr(capacity, "max_num_seqs", 0) or 256))
        except BaseException as exc:
            loaded.set_exception(exc)
            return
        loaded.set_result(None)
        self._serve()

    def _serve(self) -> None:
        engine = self.llm.llm_engine
        items: list[_Call | _Abort | None] = []
        try:
            while True:
                # Idle: block until a call comes. Busy: take what arrived, admit, then step.
                busy = engine.has_unfinished_requests() or self._admission.waiting
                items = [] if busy else [self._inbox.get()]
                while True:
                    try:
                        items.append(self._inbox.get_nowait())
                    except queue.Empty:
                        break
                for item in items:
                    if item is None:
                        raise _Closed("the engine was closed")
                    if isinstance(item, _Abort):
                        self._abort(item.call)
                    else:
                        self._accept_or_refuse(item)
                self._admit_waiting()
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
            if self.pool and not isinstance(exc, _Closed):
                # A shared replica serves many councils: rather than answer EngineStopped to
                # each of them until it idles out, its process ends (once the answers above
                # are out) and Ray starts it again with a fresh engine (max_restarts=-1).
                print(f"swe-fleet engine pool {self.pool!r} replica {self.replica}: engine failed "
                      f"({type(exc).__name__}: {exc}); restarting", flush=True)  # fmt: skip
                threading.Timer(RESTART_AFTER_FAILURE_S, os._exit, (1,)).start()

    def _accept_or_refuse(self, call: _Call) -> None:
        """Take ``call`` in; if its requests cannot even be read (e.g. messages the model's chat
        template refuses), that call fails alone and the engine goes on."""
        try:
            self._accept(call)
        except Exception as exc:
            self._abort(call)
            _settle(call.done, error=RuntimeError(f"vLLM refused the requests: {type(exc).__name__}: {exc}"))

    def _accept(self, call: _Call) -> None:
        """Answer at once the requests that cannot fit the context; queue the rest for admission."""
        call.results = [None] * len(call.batch)
        fitting: list[tuple[_Call, int]] = []
        for i, req in enumerate(call.batch):
            prompt_tokens = count_prompt_tokens(self.tokenizer, [dict(m) for m in req.messages])
            if prompt_tokens + req.max_tokens > self.max_model_len:
                call.results[i] = Completion(
                    text="",
                    prompt_tokens=prompt_tokens,
                    error=(
                        f"prompt of {prompt_tokens} tokens + max_tokens {req.max_tokens} exceeds "
                        f"the model's context of {self.max_model_len} tokens (model.max_model_len)"
                    ),
                )
            else:
                fitting.append((call, i))
        call.open = len(fitting)
        self._admission.add(call.client, fitting, call.max_inflight)
        self._maybe_done(call)

    def _admit_waiting(self) -> None:
        """Start the requests admission lets in now, one ``enqueue_chat`` per call."""
        by_call: dict[_Call, list[int]] = {}
        for _client, (call, position) in self._admission.admit():
            by_call.setdefault(call, []).append(position)
        for call, positions in by_call.items():
            try:
                self._enqueue(call, positions)
            except Exception as exc:
                # vLLM refused them (e.g. a parameter it does not take): that call fails alone.
                self._admission.finished(call.client, len(positions))  # none of them started
                self._abort(call)
                _settle(
                    call.done, error=RuntimeError(f"vLLM refused the requests: {type(exc).__name__}: {exc}")
                )

    def _enqueue(self, call: _Call, positions: list[int]) -> None:
        conversations = [[dict(m) for m in call.batch[i].messages] for i in positions]
        params = [sampling_params(call.batch[i]) for i in positions]
        internal_ids = self.llm.enqueue_chat(conversations, sampling_params=params, use_tqdm=False)
        for internal, pos in zip(internal_ids, positions, strict=True):
            request_id = external_id(internal)
            call.running[request_id] = pos
            call.internal[request_id] = internal
            self._by_request[request_id] = call

    def _finish(self, out: Any) -> None:
        call = self._by_request.pop(out.request_id, None)
        if call is None:
            return  # aborted meanwhile
        call.internal.pop(out.request_id, None)
        call.results[call.running.pop(out.request_id)] = completion(out)
        call.open -= 1
        self._admission.finished(call.client)
        self._maybe_done(call)

    @staticmethod
    def _maybe_done(call: _Call) -> None:
        if call.open <= 0:
            _settle(call.done, result=[r for r in call.results if r is not None])

    def _abort(self, call: _Call) -> None:
        """Take ``call``'s requests out: those waiting for admission and those running."""
        withdrawn = self._admission.withdraw(call.client, lambda item: item[0] is call)
        taken = withdrawn + len(call.running)
        if taken:
            _count(self.aborted_by_client, call.client, taken)
        ids = [call.internal[request_id] for request_id in call.running]
        for request_id in call.running:
            self._by_request.pop(request_id, None)
        self._admission.finished(call.client, len(call.running))
        call.running.clear()
        call.internal.clear()
        call.open = 0
        if ids:
            self.llm.llm_engine.abort_request(ids, internal=True)

    def _fail_all(self, exc: BaseException, taken: list[_Call]) -> None:
        waiting = [call for call, _ in self._admission.drain()]
        calls = {id(c): c for c in [*self._by_request.values(), *taken, *waiting]}
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


def _count(counts: dict[str, int], client: str, n: int = 1) -> None:
    """Add ``n`` to ``client``'s count, keeping the :data:`CLIENTS_KEPT` latest clients."""
    counts[client] = counts.pop(client, 0) + n  # to the end: the latest
    while len(counts) > CLIENTS_KEPT:
        del counts[next(iter(counts))]


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
