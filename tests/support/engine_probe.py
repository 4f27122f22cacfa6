"""Run one :class:`~swe_fleet.llm.engine_actor.VLLMEngine` in this process (no Ray) and print,
as one JSON line, what its concurrent calls did (tests/integration/test_engine_actor.py). A
process of its own: the engine's memory goes with it, not with the pytest worker."""

from __future__ import annotations

import asyncio
import json
import time

from swe_fleet.llm.base import ChatRequest
from swe_fleet.llm.engine_actor import VLLMEngine
from swe_fleet.spec import ModelSpec


def ask(text: str, max_tokens: int) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), max_tokens=max_tokens)


async def probe() -> dict[str, object]:
    engine = VLLMEngine(ModelSpec(num_cpus=2), replica=0)
    out: dict[str, object] = {}
    started = time.monotonic()
    # ignore_eos is not asked for: "count to 500" keeps SmolLM2 going past 100 tokens (the same
    # prompt three times: a variant of it ended after 9 tokens, before the short call came).
    counting = [ask("Count from 1 to 500, one number per line.", 160) for _ in range(3)]
    long_call = asyncio.create_task(engine.chat(counting))
    deadline = time.monotonic() + 120
    while not any(n == 3 for _, n in engine.timeline()):  # the long call's 3 requests are running
        assert time.monotonic() < deadline and not long_call.done(), "the long call's requests never ran"
        await asyncio.sleep(0.01)
    short = await engine.chat([ask("Say hello.", 4), ask("Name a colour.", 4)])
    out["short_done_s"] = time.monotonic() - started
    out["long_running_when_short_done"] = not long_call.done()
    out["short_tokens"] = [c.output_tokens for c in short]
    long = await long_call
    out["long_done_s"] = time.monotonic() - started
    out["long_tokens"] = [c.output_tokens for c in long]
    mixed = await engine.chat([ask("x " * 3000, 8), ask("Say hi.", 4)])
    out["mixed"] = [[c.error, c.output_tokens] for c in mixed]
    cancelled = asyncio.create_task(engine.chat([ask("Count from 1 to 500, one per line.", 400)]))
    await asyncio.sleep(1.0)
    cancelled.cancel()
    try:
        await cancelled
    except asyncio.CancelledError:
        out["cancelled"] = True
    await asyncio.sleep(0.5)  # the step thread aborts it at its next turn
    out["unfinished_after_cancel"] = engine.llm.llm_engine.get_num_unfinished_requests()
    out["peak_in_flight"] = max(n for _, n in engine.timeline())
    # Two councils on one replica: "big" may run 2 requests at once, "small" comes later.
    big = asyncio.create_task(
        engine.chat([ask(f"Count from 1 to 500, one per line ({i}).", 96) for i in range(6)], "big", 2)
    )
    await asyncio.sleep(0.3)
    small = asyncio.create_task(engine.chat([ask("Say hello.", 4)], "small", 2))
    peak_big = 0
    while not big.done():
        peak_big = max(peak_big, engine._admission.running_by_client().get("big", 0))
        if small.done() and "small_before_big" not in out:
            out["small_before_big"] = not big.done()
        await asyncio.sleep(0.05)
    out["small_tokens"] = [c.output_tokens for c in await small]
    out["big_tokens"] = [c.output_tokens for c in await big]
    out["peak_running_big"] = peak_big
    out["calls_by_client"] = {c: engine.call_count(c) for c in ("big", "small")}
    out["calls"] = engine.call_count()
    engine.close()
    try:
        await engine.chat([ask("Say hi.", 4)])
    except RuntimeError as exc:
        out["after_close"] = str(exc)
    return out


if __name__ == "__main__":
    print("PROBE " + json.dumps(asyncio.run(probe())), flush=True)
