"""Server backend against real HTTP servers: an aiohttp stand-in for the failure cases, and a
real vLLM CPU server on the local SmolLM2 model."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from swe_fleet._processes import free_port
from swe_fleet.council.ranking import expected_scores, vote_schema
from swe_fleet.errors import LLMError
from swe_fleet.llm.base import ChatRequest
from swe_fleet.llm.server import ServerGenerator, ServerRetryPolicy, served_models, wait_until_healthy
from swe_fleet.local.vllm_server import VLLMServer

pytestmark = pytest.mark.integration

#: Fast backoff for the stand-in server: the policy is the real one, only the waits are short.
FAST = ServerRetryPolicy(max_attempts=4, budget_s=10.0, initial_wait_s=0.01, max_wait_s=0.05)


@dataclass
class FakeVLLM:
    """An OpenAI-compatible stand-in whose behaviour is chosen by the user message's content:
    ``fail-twice:*`` answers 503 twice then 200, ``too-long`` answers 400 like vLLM, ``always-503``
    never recovers, ``slow`` outlives the client's timeout; anything else is echoed."""

    url: str = ""
    hits: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    delay_s: float = 0.02

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        content = body["messages"][-1]["content"]
        self.hits[content] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if content.startswith("fail-twice") and self.hits[content] <= 2:
                return web.json_response({"error": {"message": "engine busy", "code": 503}}, status=503)
            if content == "always-503":
                return web.json_response({"error": {"message": "engine busy", "code": 503}}, status=503)
            if content == "too-long":
                message = "This model's maximum context length is 2048 tokens."
                return web.json_response(
                    {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
                    status=400,
                )
            if content == "slow":
                await asyncio.sleep(1.0)  # > the test's request_timeout_s
            return web.json_response(
                {
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo {content}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
                }
            )
        finally:
            self.in_flight -= 1

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})


@pytest.fixture
async def fake_vllm() -> AsyncIterator[FakeVLLM]:
    """A FakeVLLM listening on a free loopback port for one test."""
    fake = FakeVLLM()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/health", fake.health)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def _req(content: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": content},), max_tokens=8, **kw)  # type: ignore[arg-type]


async def test_503_twice_then_200_succeeds_on_the_third_attempt(fake_vllm: FakeVLLM) -> None:
    """Two 503s are retried; the third attempt's answer is the completion."""
    gen = ServerGenerator(fake_vllm.url, "fake-model", policy=FAST)
    try:
        [c] = await gen.generate([_req("fail-twice:a")])
    finally:
        await gen.close()
    assert c.ok and c.text == "echo fail-twice:a"
    assert (c.prompt_tokens, c.output_tokens, c.finish_reason) == (10, 3, "stop")
    assert fake_vllm.hits["fail-twice:a"] == 3


async def test_400_fails_only_its_own_request(fake_vllm: FakeVLLM) -> None:
    """A 400 sets that Completion's error (status and server message), is not retried, and the
    rest of the batch still succeeds."""
    gen = ServerGenerator(fake_vllm.url, "fake-model", policy=FAST)
    try:
        out = await gen.generate([_req("one"), _req("too-long"), _req("three")])
    finally:
        await gen.close()
    assert [c.ok for c in out] == [True, False, True]
    bad = out[1]
    assert bad.text == "" and bad.error is not None
    assert "400" in bad.error and "maximum context length is 2048" in bad.error
    assert fake_vllm.hits["too-long"] == 1


async def test_exhausted_retries_name_the_url_in_the_error(fake_vllm: FakeVLLM) -> None:
    """A server that keeps answering 503 gives an error Completion naming the URL after max_attempts."""
    gen = ServerGenerator(fake_vllm.url, "fake-model", policy=FAST)
    try:
        [c] = await gen.generate([_req("always-503")])
    finally:
        await gen.close()
    assert not c.ok and c.error is not None
    assert f"{fake_vllm.url}/v1/chat/completions" in c.error and "4 attempts" in c.error and "503" in c.error
    assert fake_vllm.hits["always-503"] == 4


async def test_request_timeout_is_retried_then_reported(fake_vllm: FakeVLLM) -> None:
    """A request that outlives request_timeout_s is retried as a timeout, then reported, never hung."""
    policy = ServerRetryPolicy(max_attempts=2, budget_s=10.0, initial_wait_s=0.01, max_wait_s=0.05)
    gen = ServerGenerator(fake_vllm.url, "fake-model", request_timeout_s=0.3, policy=policy)
    try:
        [c] = await asyncio.wait_for(gen.generate([_req("slow")]), 5)
    finally:
        await gen.close()
    assert not c.ok and c.error is not None and "Timeout" in c.error
    assert fake_vllm.hits["slow"] == 2


async def test_concurrency_is_bounded_and_order_kept(fake_vllm: FakeVLLM) -> None:
    """No more than `concurrency` requests are in flight, and result[i] answers batch[i]; stats count
    one call per generate."""
    gen = ServerGenerator(fake_vllm.url, "fake-model", concurrency=3, policy=FAST)
    batch = [_req(f"q{i}") for i in range(20)]
    try:
        out = await gen.generate(batch)
    finally:
        await gen.close()
    assert [c.text for c in out] == [f"echo q{i}" for i in range(20)]
    assert fake_vllm.max_in_flight == 3  # reached, never exceeded
    assert (gen.stats.calls, gen.stats.requests, gen.stats.output_tokens) == (1, 20, 60)
    assert gen.stats.generate_seconds > 0


async def test_unreachable_server_gives_error_completions_not_an_exception() -> None:
    """With nothing listening, every request gets an error naming the URL; the batch does not raise."""
    url = f"http://127.0.0.1:{free_port()}"
    gen = ServerGenerator(url, "m", policy=FAST)
    try:
        out = await gen.generate([_req("a"), _req("b")])
    finally:
        await gen.close()
    assert all(not c.ok and c.error is not None and url in c.error for c in out)


async def test_health_and_models_of_a_running_server(fake_vllm: FakeVLLM) -> None:
    """wait_until_healthy returns at once for a healthy server; served_models lists its names."""
    await wait_until_healthy(fake_vllm.url, timeout_s=5)
    assert await served_models(fake_vllm.url) == ["fake-model"]


async def test_wait_until_healthy_is_bounded_and_names_the_url() -> None:
    """With nothing listening, wait_until_healthy raises LLMError naming the URL after its bound."""
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LLMError, match=f"{url}/health") as info:
        await asyncio.wait_for(wait_until_healthy(url, timeout_s=1.0, poll_s=0.2), 5)
    assert info.value.backend == "server"


@pytest.mark.llm
@pytest.mark.slow
async def test_real_vllm_server_completes_a_batch_with_structured_output(vllm_server: VLLMServer) -> None:
    """A real vLLM CPU server (the session's) answers a batch of 4 in order; the
    schema-constrained answer is JSON with every key; tokens are counted."""
    server = vllm_server
    gen = ServerGenerator(server.base_url, server.served_model_name, concurrency=4)
    try:
        await wait_until_healthy(server.base_url, timeout_s=10)
        assert await served_models(server.base_url) == [server.served_model_name]
        schema = vote_schema(["a", "b"], 1, 10)
        batch = [
            _req("Say hello in one word."),
            _req("Name a colour."),
            ChatRequest(
                messages=({"role": "user", "content": "Score proposals a and b from 1 to 10 as JSON."},),
                max_tokens=64,
                json_schema=schema,
                top_logprobs=20,
            ),
            _req("Count to three."),
        ]
        out = await gen.generate(batch)
    finally:
        await gen.close()
    assert len(out) == 4 and all(c.ok for c in out), [c.error for c in out]
    vote = json.loads(out[2].text)
    assert set(vote["scores"]) == {"a", "b"}
    assert all(1 <= v <= 10 for v in vote["scores"].values())
    assert all(c.prompt_tokens > 0 and c.output_tokens > 0 for c in out)
    assert gen.stats.output_tokens == sum(c.output_tokens for c in out)
    # The vote asked for token probabilities: one entry per generated token, spelling the text
    # (and the end-of-sequence token after it),
    # each with up to 20 alternatives; they give an expected score for both candidates.
    assert len(out[2].tokens) == out[2].output_tokens
    spelled = "".join(t for t, _ in out[2].tokens)
    assert spelled.startswith(out[2].text) and spelled[len(out[2].text) :] in ("", "<|im_end|>")
    assert all(1 <= len(alts) <= 20 for _, alts in out[2].tokens)
    judged = expected_scores(out[2].text, out[2].tokens, ["a", "b"], 1, 10)
    assert set(judged) == {"a", "b"} and all(1 <= v <= 10 for v in judged.values()), judged
    assert out[0].tokens == ()  # not asked for
