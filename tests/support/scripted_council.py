"""A deterministic in-process council: a scripted LLM that answers by phase, and a publisher that
records. The protocol is pure; these are the one place a fake LLM belongs (tests/unit/test_protocol.py,
tests/unit/test_report.py)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from swe_fleet.council.deliberation import run_deliberation
from swe_fleet.llm.base import ChatRequest, Completion
from swe_fleet.spec import CouncilSpec


def _phase(req: ChatRequest) -> str:
    user = req.messages[-1]["content"]
    if req.json_schema:
        return "vote"
    if "Critique each" in user:
        return "critique"
    if "revised proposal" in user:
        return "revise"
    return "propose"


class ScriptedLLM:
    """Answers by phase; records every batch it was given."""

    def __init__(self, answer: Callable[[str, ChatRequest], str]) -> None:
        self.answer = answer
        self.batches: list[list[ChatRequest]] = []

    async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
        self.batches.append(list(batch))
        await asyncio.sleep(0)  # like a real backend: other tasks' calls go on meanwhile
        return [Completion(text=self.answer(_phase(r), r), output_tokens=5) for r in batch]

    async def close(self) -> None:
        return None


class Recorder:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def publish_all(self, events: Sequence[Any], concurrency: int = 64) -> list[Any]:
        self.events.extend(events)
        return list(events)


def _task_of(req: ChatRequest) -> str:
    return re.search(r"Task (\w+):", req.messages[-1]["content"]).group(1)  # type: ignore[union-attr]


def _agent_of(req: ChatRequest) -> str:
    return re.search(r"You are (\w+), the council's", req.messages[-1]["content"]).group(1)  # type: ignore[union-attr]


def _targets(req: ChatRequest) -> list[str]:
    """The headings a critique is asked for (the listing above it also shows the critic's own)."""
    asked = re.search(r"under its own heading \(([^)]*)\)", req.messages[-1]["content"])
    return re.findall(r"### (\w+)", asked.group(1)) if asked else []


def default_answer(phase: str, req: ChatRequest) -> str:
    task = _task_of(req)
    if phase == "vote":
        cands = req.json_schema["properties"]["scores"]["required"]  # type: ignore[index]
        return json.dumps({"scores": {c: 3 + "abc".index(c) + (task == "t2") for c in cands}})
    if phase == "critique":
        return "\n".join(f"### {t}\n{t} in {task} misses edge cases." for t in _targets(req))
    if phase == "revise":
        return f"revised plan for {task}"
    return f"plan for {task}"


async def run_scripted(
    spec_text: str, answer: Callable[[str, ChatRequest], str] = default_answer, submission_id: str = "sub"
):  # type: ignore[no-untyped-def]
    """A whole council on the scripted LLM: (spec, llm, recorder, report)."""
    spec = CouncilSpec.from_text(spec_text)
    llm, pub = ScriptedLLM(answer), Recorder()
    report = await run_deliberation(spec, submission_id=submission_id, generator=llm, publisher=pub)
    return spec, llm, pub, report
