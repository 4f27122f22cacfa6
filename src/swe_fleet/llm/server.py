"""Server backend: an aiohttp client to a vLLM OpenAI-compatible server (``/v1/chat/completions``).

One HTTP request per :class:`~swe_fleet.llm.base.ChatRequest`, at most ``concurrency`` in flight;
the server's continuous batching does the rest. Only transient failures (connection trouble,
timeouts, HTTP 429 and 5xx) are retried, bounded by attempts *and* total time.

A request that still fails does not fail the batch: its :class:`~swe_fleet.llm.base.Completion`
carries ``error`` (and empty ``text``), so the council publishes a failed event for that one
agent and the deliberation goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from swe_fleet.errors import ConfigError, LLMError, ServerStatusError
from swe_fleet.llm.base import BatchStats, ChatRequest, Completion

log = structlog.get_logger(__name__)

#: Exceptions that go away by themselves (a restarting server, a dropped connection, a slow answer).
#: ``aiohttp.ServerDisconnectedError`` and aiohttp's own timeout errors are subclasses of these.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,  # the server died mid-response
    asyncio.TimeoutError,
)

#: The ``json_schema.name`` sent with structured-output requests (OpenAI requires one; vLLM ignores it).
SCHEMA_NAME = "swe_fleet_response"

#: Bound on a server becoming healthy when a job starts (the server is not ours: it should be up).
START_TIMEOUT_S = 120.0

#: Longest server error body quoted in a Completion's ``error``.
_MAX_ERROR_CHARS = 500


def is_transient_status(status: int) -> bool:
    """True for statuses worth retrying: 429 (too many requests) and every 5xx."""
    return status == 429 or 500 <= status <= 599


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth retrying (see :data:`TRANSIENT_ERRORS`, :func:`is_transient_status`)."""
    if isinstance(exc, ServerStatusError):
        return is_transient_status(exc.status)
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclass(frozen=True)
class ServerRetryPolicy:
    """How hard one chat request tries: attempts and total time both bound it.

    The time budget counts from the request's first attempt and is checked after each failed
    attempt, so the worst case is about ``budget_s`` plus one ``request_timeout_s``.
    """

    max_attempts: int = 6
    budget_s: float = 120.0
    initial_wait_s: float = 0.5
    max_wait_s: float = 10.0

    def retrying(
        self,
        sleep: Callable[[float], Any] | None = None,
        *,
        before_sleep: Callable[[RetryCallState], Any] | None = None,
    ) -> AsyncRetrying:
        """A fresh tenacity controller for one request (``sleep`` injectable for tests)."""
        kwargs: dict[str, Any] = {}
        if sleep is not None:
            kwargs["sleep"] = sleep
        if before_sleep is not None:
            kwargs["before_sleep"] = before_sleep
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.budget_s),
            wait=wait_exponential_jitter(multiplier=self.initial_wait_s, max=self.max_wait_s),
            retry=retry_if_exception(is_transient),
            reraise=False,
            **kwargs,
        )


def chat_body(model: str, request: ChatRequest) -> dict[str, Any]:
    """The JSON body of ``POST /v1/chat/completions`` for one request.

    A ``json_schema`` is sent as OpenAI's ``response_format`` (type ``json_schema``); vLLM 0.32
    turns it into ``StructuredOutputsParams(json=schema)``, the same constraint the engine
    backend applies.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
    }
    if request.seed is not None:
        body["seed"] = request.seed
    if request.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA_NAME, "schema": request.json_schema},
        }
    if request.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    return body


def completion_from_response(data: dict[str, Any]) -> Completion:
    """Map an OpenAI chat completion response to a :class:`Completion`.

    Raises:
        KeyError, IndexError, TypeError: the body is not a chat completion.
    """
    choice = data["choices"][0]
    usage = data.get("usage") or {}
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = tuple(
        (
            str(item["token"]),
            tuple((str(t["token"]), float(t["logprob"])) for t in item.get("top_logprobs") or ()),
        )
        for item in content
    )
    return Completion(
        text=choice["message"].get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason"),
        tokens=tokens,
    )


def _server_message(body: str) -> str:
    """vLLM's ``{"error": {"message": ...}}`` (or ``{"message": ...}``), else the raw body, shortened."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:_MAX_ERROR_CHARS]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:_MAX_ERROR_CHARS]
        if "message" in data:
            return str(data["message"])[:_MAX_ERROR_CHARS]
    return body[:_MAX_ERROR_CHARS]


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error recorded"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ServerGenerator:
    """A :class:`~swe_fleet.llm.base.Generator` over a vLLM OpenAI-compatible server.

    Failures are per request, never per batch: a non-retryable HTTP 4xx (e.g. 400 because the
    prompt exceeds the model's context) or a transient failure that outlasts the retry policy
    gives that request a :class:`Completion` with empty ``text`` and ``error`` naming the
    status or URL and the server's message / last error. The council then publishes a failed
    event for that agent instead of losing the whole phase. ``generate`` itself does not raise
    for HTTP or network trouble; use :func:`wait_until_healthy` first to fail fast on a server
    that is not there.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        concurrency: int = 16,
        request_timeout_s: float = 300.0,
        policy: ServerRetryPolicy | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}", setting="server.concurrency")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.policy = policy or ServerRetryPolicy()
        self.start_timeout_s = start_timeout_s
        self.stats = BatchStats()
        self.url = f"{self.base_url}/v1/chat/completions"
        # Created on first use, inside the event loop that uses them.
        self._session: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _client(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                connector=aiohttp.TCPConnector(limit=self.concurrency),
            )
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._session, self._semaphore

    async def start(self) -> None:
        """Wait until the server answers ``/health`` (bounded by ``start_timeout_s``).

        Raises:
            LLMError: not healthy in time (the URL and the last answer are named).
        """
        await wait_until_healthy(self.base_url, timeout_s=self.start_timeout_s)

    async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request, at most ``concurrency`` in flight; ``result[i]`` answers ``batch[i]``."""
        if not batch:
            return []
        session, semaphore = self._client()
        started = time.monotonic()
        out = list(await asyncio.gather(*(self._complete(session, semaphore, r) for r in batch)))
        self.stats.calls += 1
        self.stats.requests += len(batch)
        self.stats.output_tokens += sum(c.output_tokens for c in out)
        self.stats.generate_seconds += time.monotonic() - started
        failed = sum(not c.ok for c in out)
        if failed:
            log.warning("server.batch.partial", url=self.url, requests=len(batch), failed=failed)
        return out

    async def _complete(
        self, session: aiohttp.ClientSession, semaphore: asyncio.Semaphore, request: ChatRequest
    ) -> Completion:
        body = chat_body(self.model, request)

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("server.retry", url=self.url, attempt=state.attempt_number, error=_describe(exc))

        # The slot is held across backoff sleeps: a server answering 429/503 gets fewer
        # requests, and queueing for a slot does not eat into this request's time budget.
        async with semaphore:
            result: Completion | None = None
            try:
                async for attempt in self.policy.retrying(before_sleep=log_retry):
                    with attempt:
                        result = await self._post(session, body)
            except RetryError as exc:
                last = exc.last_attempt
                return Completion(
                    text="",
                    error=(
                        f"POST {self.url} failed after {last.attempt_number} attempts: "
                        f"{_describe(last.exception())}; check the vLLM server (logs, /health)"
                    ),
                )
            except ServerStatusError as exc:  # a 4xx: the request's own fault, retrying won't help
                return Completion(text="", error=f"HTTP {exc.status} from {exc.url}: {exc.server_message}")
            except (aiohttp.ClientError, ValueError, KeyError, IndexError, TypeError) as exc:
                return Completion(text="", error=f"POST {self.url} failed: {_describe(exc)}")
        assert result is not None  # the loop only ends normally after a successful attempt
        return result

    async def _post(self, session: aiohttp.ClientSession, body: dict[str, Any]) -> Completion:
        async with session.post(self.url, json=body) as resp:
            if resp.status != 200:
                raise ServerStatusError(
                    status=resp.status, url=self.url, server_message=_server_message(await resp.text())
                )
            data = await resp.json(content_type=None)
        return completion_from_response(data)

    async def close(self) -> None:
        """Close the HTTP session (the server keeps running; it is not ours)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def wait_until_healthy(base_url: str, timeout_s: float = 240.0, *, poll_s: float = 0.5) -> None:
    """Poll ``GET {base_url}/health`` until it answers 200 (bounded by ``timeout_s``).

    Raises:
        LLMError: no 200 within ``timeout_s`` (the URL and the last answer are named).
    """
    url = f"{base_url.rstrip('/')}/health"
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    async with aiohttp.ClientSession() as session:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with session.get(
                    url, timeout=aiohttp.ClientTimeout(total=max(0.1, min(2.0, remaining)))
                ) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = _describe(exc)
            await asyncio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
    raise LLMError(
        f"the vLLM server at {url} was not healthy within {timeout_s:.0f} s (last: {last}); "
        "check that it runs and its log (model load takes ~40 s on 2 CPU cores)",
        backend="server",
    )


async def served_models(base_url: str, *, timeout_s: float = 10.0) -> list[str]:
    """The model names a server serves (``GET {base_url}/v1/models``), for the ``model`` field.

    Raises:
        LLMError: the server did not answer 200 with a model list within ``timeout_s``.
    """
    url = f"{base_url.rstrip('/')}/v1/models"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise LLMError(
                    f"GET {url} answered HTTP {resp.status}: {_server_message(await resp.text())}",
                    backend="server",
                )
            data = await resp.json(content_type=None)
        return [str(m["id"]) for m in data["data"]]
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LLMError(
            f"cannot list models at {url} within {timeout_s:.0f} s ({_describe(exc)}); "
            "check the server URL and that the server is healthy",
            backend="server",
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise LLMError(f"GET {url} did not return a model list: {_describe(exc)}", backend="server") from exc
