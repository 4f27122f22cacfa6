"""Server backend retry policy (transient errors and statuses only, bounded) and request mapping,
as pure functions with an injected sleep."""

from __future__ import annotations

import aiohttp
import pytest
from tenacity import RetryError

from swe_fleet.errors import ServerStatusError
from swe_fleet.llm.base import ChatRequest
from swe_fleet.llm.server import (
    SCHEMA_NAME,
    ServerRetryPolicy,
    chat_body,
    completion_from_response,
    is_transient,
    is_transient_status,
)

from support.retry import run_with_retries

URL = "http://127.0.0.1:1/v1/chat/completions"


def _status(code: int) -> ServerStatusError:
    return ServerStatusError(status=code, url=URL, server_message="m")


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 599])
def test_429_and_5xx_are_transient(status: int) -> None:
    """Too-many-requests and every server error are worth retrying."""
    assert is_transient_status(status)
    assert is_transient(_status(status))


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 404, 413, 422, 499])
def test_other_statuses_are_not_transient(status: int) -> None:
    """A 4xx other than 429 is the request's own fault: retrying cannot help."""
    assert not is_transient_status(status)
    assert not is_transient(_status(status))


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("refused"),
        aiohttp.ServerTimeoutError("read timeout"),
        TimeoutError(),  # asyncio.TimeoutError is this builtin since 3.11
        aiohttp.ClientPayloadError("server died mid-response"),
    ],
)
def test_connection_errors_and_timeouts_are_transient(exc: BaseException) -> None:
    """Dropped connections, refused connects and timeouts are retried."""
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [ValueError("bad json"), KeyError("choices"), RuntimeError()])
def test_other_errors_are_not_transient(exc: BaseException) -> None:
    """Malformed answers and bugs surface on the first attempt."""
    assert not is_transient(exc)


async def test_503_twice_then_success_takes_three_attempts() -> None:
    """Transient statuses are retried until the request succeeds, with bounded backoff."""
    calls, sleeps = await run_with_retries(ServerRetryPolicy(max_wait_s=2.0), [_status(503), _status(503)])
    assert calls == 3
    assert len(sleeps) == 2 and all(0 < s <= 2.0 for s in sleeps)


async def test_attempts_are_bounded() -> None:
    """A server that always answers 503 is given up on after max_attempts."""
    with pytest.raises(RetryError) as info:
        await run_with_retries(ServerRetryPolicy(max_attempts=4), [_status(503) for _ in range(10)])
    assert info.value.last_attempt.attempt_number == 4
    assert isinstance(info.value.last_attempt.exception(), ServerStatusError)


async def test_total_time_is_bounded() -> None:
    """With its time budget spent, the policy stops even though attempts remain."""
    with pytest.raises(RetryError) as info:
        await run_with_retries(
            ServerRetryPolicy(max_attempts=100, budget_s=0.0), [aiohttp.ServerDisconnectedError()]
        )
    assert info.value.last_attempt.attempt_number == 1


async def test_4xx_is_not_retried() -> None:
    """A 400 surfaces as itself on the first attempt."""
    errors: list[BaseException] = [_status(400), _status(400)]
    with pytest.raises(ServerStatusError) as info:
        await run_with_retries(ServerRetryPolicy(), errors)
    assert info.value.status == 400
    assert len(errors) == 1  # exactly one attempt was made


def test_chat_body_asks_for_structured_output_via_response_format() -> None:
    """A json_schema becomes OpenAI's response_format of type json_schema; seed only when set."""
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    req = ChatRequest(messages=({"role": "user", "content": "hi"},), max_tokens=7, json_schema=schema)
    body = chat_body("m", req)
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 7,
        "temperature": 0.0,
        "response_format": {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema}},
    }
    plain = chat_body("m", ChatRequest(messages=(), max_tokens=1, temperature=0.5, seed=3))
    assert plain["seed"] == 3 and "response_format" not in plain


def test_completion_maps_text_usage_and_finish_reason() -> None:
    """The first choice's content, usage token counts and finish reason make the Completion."""
    data = {
        "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }
    c = completion_from_response(data)
    assert (c.text, c.prompt_tokens, c.output_tokens, c.finish_reason, c.ok) == ("ok", 11, 5, "length", True)
