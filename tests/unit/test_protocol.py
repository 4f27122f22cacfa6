"""The whole protocol against a deterministic in-process generator (the protocol is pure; this is
the one place a fake LLM belongs): phase order, batching, routing, early stop, long context."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from swe_fleet.council.deliberation import run_deliberation
from swe_fleet.events import AgentResponseCompleted, AgentResponseFailed, DeliberationCompleted
from swe_fleet.llm.base import ChatRequest, Completion
from swe_fleet.spec import CouncilSpec

from support.scripted_council import (
    Recorder,
    ScriptedLLM,
    _agent_of,
    _phase,
    _targets,
    _task_of,
    default_answer,
    run_scripted,
)

BASE = """
name: p
tasks: [{id: t1, prompt: first task}, {id: t2, prompt: second task}]
agents: [{id: a, role: architect}, {id: b, role: developer}, {id: c, role: qa}]
"""


async def _run(spec_text: str, answer: Callable[[str, ChatRequest], str] = default_answer):  # type: ignore[no-untyped-def]
    return await run_scripted(spec_text, answer)


async def test_barrier_phases_run_in_order_one_batch_each_across_all_tasks() -> None:
    """Barrier schedule: propose, (critique, revise) x k, vote: one generator call per phase
    with every task in it."""
    _, llm, pub, _ = await _run(
        BASE + "protocol: {critique_rounds: 2, early_stop: false, schedule: barrier}\n"
    )
    assert [_phase(b[0]) for b in llm.batches] == [
        "propose",
        "critique",
        "revise",
        "critique",
        "revise",
        "vote",
    ]
    for batch in llm.batches:
        assert len(batch) == 6 and {_task_of(r) for r in batch} == {"t1", "t2"}
    phases = Counter((e.phase, e.round) for e in pub.events if not isinstance(e, DeliberationCompleted))
    assert phases == {("propose", 0): 6, ("critique", 1): 6, ("revise", 1): 6,
                      ("critique", 2): 6, ("revise", 2): 6, ("vote", 0): 6}  # fmt: skip
    keys = [e.key for e in pub.events]
    assert len(keys) == len(set(keys))


async def test_pipelined_tasks_move_through_their_phases_independently() -> None:
    """Pipelined schedule (the default): one call per (task, phase) holding only that task's
    agents, each task's phases in order, the tasks' calls interleaved (t2's propose is asked
    before t1's critique: nobody waits for a phase barrier), and the same events as the
    barrier schedule."""
    text = BASE + "protocol: {critique_rounds: 2, early_stop: false}\n"
    _, llm, pub, report = await _run(text)
    calls = [(_task_of(b[0]), _phase(b[0])) for b in llm.batches]
    assert all(len(b) == 3 and len({_task_of(r) for r in b}) == 1 for b in llm.batches)
    order = ["propose", "critique", "revise", "critique", "revise", "vote"]
    assert [p for t, p in calls if t == "t1"] == order and [p for t, p in calls if t == "t2"] == order
    assert calls.index(("t2", "propose")) < calls.index(("t1", "critique"))
    _, _, barrier_pub, barrier = await _run(
        text.replace("early_stop: false", "early_stop: false, schedule: barrier")
    )
    assert sorted(e.key for e in pub.events) == sorted(e.key for e in barrier_pub.events)
    assert [r.model_dump(exclude={"created_at"}) for r in report.results] == [
        r.model_dump(exclude={"created_at"}) for r in barrier.results]  # fmt: skip


async def test_a_pipelined_task_publishes_its_result_while_another_is_still_deliberating() -> None:
    """t1 stops early (no objections) and its result is published before t2's last critique
    round is asked for."""

    class Slow(ScriptedLLM):
        """t2's calls take a few more turns of the loop (a longer answer)."""

        async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
            if _task_of(batch[0]) == "t2":
                for _ in range(5):
                    await asyncio.sleep(0)
            return await super().generate(batch)

    def answer(phase: str, req: ChatRequest) -> str:
        if phase == "critique" and _task_of(req) == "t1":
            return "\n".join(f"### {t}\nNO OBJECTION" for t in _targets(req))
        return default_answer(phase, req)

    spec = CouncilSpec.from_text(BASE + "protocol: {critique_rounds: 3}\n")
    llm, pub = Slow(answer), Recorder()
    seen: list[str] = []

    class Watching(Recorder):
        async def publish_all(self, events: Sequence[Any], concurrency: int = 64) -> list[Any]:
            seen.extend(
                f"result {e.task_id}"
                if isinstance(e, DeliberationCompleted)
                else f"{e.task_id} {e.phase}.{e.round}"
                for e in events
            )
            return await pub.publish_all(events)

    report = await run_deliberation(spec, submission_id="sub", generator=llm, publisher=Watching())
    assert seen.index("result t1") < seen.index("t2 critique.3")
    assert [(r.task_id, r.early_stopped, r.rounds_run) for r in report.results] == [
        ("t1", True, 1),
        ("t2", False, 3),
    ]
    assert report.task_seconds["t1"] <= report.task_seconds["t2"]


async def test_each_agent_speaks_with_its_role_prompt_in_every_phase() -> None:
    """Every request has the shared council prompt as its system message and its agent's
    role and role prompt in the user turn; every agent speaks equally often."""
    _, llm, _, _ = await _run(BASE)
    spec = CouncilSpec.from_text(BASE)
    requests = [r for b in llm.batches for r in b]
    assert {r.messages[0]["content"] for r in requests} == {spec.protocol.council_prompt}
    by_id = {a.id: a for a in spec.agents}
    for r in requests:
        agent = by_id[_agent_of(r)]
        assert f"the council's {agent.role}. {agent.resolved_role_prompt()}" in r.messages[-1]["content"]
    seen = Counter(_agent_of(r) for r in requests)
    assert set(seen) == set(by_id) and len(set(seen.values())) == 1


async def test_revision_sees_only_the_critique_addressed_to_it() -> None:
    """Agent b's revise prompt holds the sections about b from a and c, not those about c."""
    _, llm, _, _ = await _run(BASE)
    revise = next(b for b in llm.batches if _phase(b[0]) == "revise")
    prompt_b = next(r for r in revise if _task_of(r) == "t1" and _agent_of(r) == "b")
    text = prompt_b.messages[-1]["content"]
    assert "From a:\nb in t1 misses edge cases." in text and "From c:\nb in t1" in text
    assert "c in t1" not in text


async def test_votes_are_on_the_final_revisions_and_rank_deterministically() -> None:
    """Voters score the revised proposals; a rerun gives the same ranking and scores."""
    _, llm, _, report = await _run(BASE)
    vote = next(b for b in llm.batches if _phase(b[0]) == "vote" and _task_of(b[0]) == "t1")
    vote_prompt = vote[0].messages[-1]["content"]
    assert "revised plan for t1" in vote_prompt
    _, _, _, report2 = await _run(BASE)
    assert [r.model_dump(exclude={"created_at"}) for r in report.results] == [
        r.model_dump(exclude={"created_at"}) for r in report2.results]  # fmt: skip
    # scores = 3 + position of the id in "abc" (+1 on t2): c is decided everywhere
    assert [x.agent_id for x in report.results[0].ranking] == ["c", "b", "a"]
    assert [(r.outcome, r.winner) for r in report.results] == [("decided", "c"), ("decided", "c")]
    assert report.results[0].transcript[0] == "sub/t1/propose/0/a"


async def test_early_stop_ends_rounds_for_tasks_without_objections() -> None:
    """When every critique of t1 says NO OBJECTION, t1 skips revise and later rounds; t2 goes on."""

    def answer(phase: str, req: ChatRequest) -> str:
        if phase == "critique" and _task_of(req) == "t1":
            return "\n".join(f"### {t}\nNO OBJECTION" for t in _targets(req))
        return default_answer(phase, req)

    _, _, pub, report = await _run(BASE + "protocol: {critique_rounds: 3}\n", answer)
    t1 = [
        (e.phase, e.round)
        for e in pub.events
        if e.task_id == "t1" and not isinstance(e, DeliberationCompleted)
    ]
    assert ("critique", 2) not in t1
    # Round 1's revise slots end uncalled: the proposals stand, and the events say why.
    revise_t1 = [e for e in pub.events if e.task_id == "t1" and getattr(e, "phase", "") == "revise"]
    assert [(e.agent_id, e.round, (e.data or {}).get("unchanged")) for e in revise_t1] == [
        ("a", 1, True), ("b", 1, True), ("c", 1, True)]  # fmt: skip
    assert all(e.content == "plan for t1" for e in revise_t1)
    t2_rounds = {e.round for e in pub.events if e.task_id == "t2" and getattr(e, "phase", "") == "critique"}
    assert t2_rounds == {1, 2, 3}
    res = {r.task_id: r for r in report.results}
    assert res["t1"].early_stopped and res["t1"].rounds_run == 1
    assert not res["t2"].early_stopped and res["t2"].rounds_run == 3


async def test_long_proposals_are_cut_deterministically_in_others_prompts() -> None:
    """A 5000-character proposal reaches critics cut to max_proposal_chars with a marker."""

    def answer(phase: str, req: ChatRequest) -> str:
        if phase == "propose" and _agent_of(req) == "a":
            return "A" * 5000
        return default_answer(phase, req)

    _, llm, _, _ = await _run(BASE + "protocol: {max_proposal_chars: 300}\n", answer)
    critique = next(b for b in llm.batches if _phase(b[0]) == "critique")
    text = critique[1].messages[-1]["content"]  # b critiques a and c on t1
    assert "A" * 300 + "\n[... 4700 characters cut]" in text and "A" * 301 not in text


async def test_unparseable_votes_fail_alone_and_are_counted() -> None:
    """Votes that are not JSON become failed events; the ranking says how many counted."""

    def answer(phase: str, req: ChatRequest) -> str:
        if phase == "vote" and _agent_of(req) == "c":
            return "they are all great"
        return default_answer(phase, req)

    _, _, pub, report = await _run(BASE, answer)
    failed = [e for e in pub.events if isinstance(e, AgentResponseFailed)]
    assert len(failed) == 2 and all(e.phase == "vote" and e.agent_id == "c" for e in failed)
    assert all((r.votes_counted, r.votes_expected) == (2, 3) for r in report.results)


async def test_failed_proposal_leaves_the_council_for_that_task() -> None:
    """An agent whose proposal failed is not critiqued, revised or voted on, but still judges."""

    class OneFails(ScriptedLLM):
        async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
            out = await super().generate(batch)
            return [
                Completion(text="", error="prompt too long")
                if _phase(r) == "propose" and _task_of(r) == "t1" and _agent_of(r) == "c"
                else c
                for r, c in zip(batch, out, strict=True)
            ]

    spec = CouncilSpec.from_text(BASE)
    llm, pub = OneFails(default_answer), Recorder()
    report = await run_deliberation(spec, submission_id="sub", generator=llm, publisher=pub)
    c_t1 = [e for e in pub.events if getattr(e, "agent_id", None) == "c" and e.task_id == "t1"]
    assert [(type(e), e.phase) for e in c_t1] == [
        (AgentResponseFailed, "propose"),
        (AgentResponseCompleted, "critique"),
        (AgentResponseFailed, "revise"),  # nothing to revise, and the event says so
        (AgentResponseCompleted, "vote"),
    ]
    assert c_t1[2].reason == "nothing to revise: this agent's proposal for this task failed"  # type: ignore[union-attr]
    ranking = {r.agent_id: r for r in report.results[0].ranking}
    assert ranking["c"].mean_score is None and ranking["c"].rank == 3
    completed = [e for e in pub.events if isinstance(e, AgentResponseCompleted)]
    # propose 5 of 6; critique 6; revise 5 (not c on t1); vote 6 (c votes on a and b in t1)
    assert len(completed) == 5 + 6 + 5 + 6


async def test_a_failing_backend_yields_failed_events_and_results_not_silence() -> None:
    """When the backend raises for a whole batch, every agent of it gets a failed event naming
    the error, and every task still gets its (winnerless) result."""
    from swe_fleet.errors import LLMError

    class Broken(ScriptedLLM):
        async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
            raise LLMError("engine actor died", backend="engine")

    spec = CouncilSpec.from_text(BASE)
    pub = Recorder()
    report = await run_deliberation(
        spec, submission_id="sub", generator=Broken(default_answer), publisher=pub
    )
    failed = [e for e in pub.events if isinstance(e, AgentResponseFailed)]
    # Every planned slot: 6 proposals failed with the error; with no proposal standing, every
    # later slot (critique, revise, vote: 18) ends uncalled saying it had nothing to do.
    assert len(failed) == 24 and len({e.key for e in failed}) == 24
    assert [e.phase for e in failed if "engine actor died" in e.reason] == ["propose"] * 6
    assert all(e.reason.startswith("nothing to ") for e in failed if e.phase != "propose")
    assert [(r.outcome, r.winner, r.reason) for r in report.results] == [
        ("failed", None, "no proposal: every agent's proposal failed")] * 2  # fmt: skip
    assert report.backend_errors == ["engine actor died"] * 2  # one per call: each task's propose


class MemoryCheckpoints:
    def __init__(self) -> None:
        self.saved: dict[str, Any] = {}

    async def load(self, submission_id: str) -> dict[str, Any] | None:
        raw = self.saved.get(submission_id)
        return json.loads(raw) if raw else None

    async def save(self, submission_id: str, checkpoint: dict[str, Any], *, after: str = "") -> None:
        self.saved[submission_id] = json.dumps(checkpoint)  # must survive JSON, like the KV store


@pytest.mark.parametrize(
    ("schedule", "rerun"),
    [("pipelined", ["revise", "revise", "vote", "vote"]), ("barrier", ["revise", "vote"])],
)
async def test_a_crashed_run_resumes_after_the_last_checkpointed_phase(
    schedule: str, rerun: list[str]
) -> None:
    """The driver dies in revise; the rerun skips propose and critique, runs revise and vote
    (per task when pipelined, across tasks with the barrier), and ranks exactly like an
    uninterrupted run."""

    class DriverDied(Exception):
        """Stands for the driver process being killed mid-phase."""

    class CrashInRevise(ScriptedLLM):
        async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
            if _phase(batch[0]) == "revise":
                raise DriverDied
            return await super().generate(batch)

    spec = CouncilSpec.from_text(BASE + f"protocol: {{schedule: {schedule}}}\n")
    store, pub = MemoryCheckpoints(), Recorder()
    with pytest.raises(DriverDied):
        await run_deliberation(
            spec,
            submission_id="sub",
            generator=CrashInRevise(default_answer),
            publisher=pub,
            checkpoints=store,
        )
    assert json.loads(store.saved["sub"])["done"] == {
        "t1": ["propose", "critique.1"],
        "t2": ["propose", "critique.1"],
    }
    llm2, pub2 = ScriptedLLM(default_answer), Recorder()
    resumed = await run_deliberation(
        spec, submission_id="sub", generator=llm2, publisher=pub2, checkpoints=store
    )
    assert sorted(_phase(b[0]) for b in llm2.batches) == rerun
    assert resumed.resumed_after == {"t1": "critique.1", "t2": "critique.1"}
    assert {e.phase for e in pub2.events if not isinstance(e, DeliberationCompleted)} == {"revise", "vote"}
    _, _, _, straight = await _run(BASE)
    assert [r.model_dump(exclude={"created_at"}) for r in resumed.results] == [
        r.model_dump(exclude={"created_at"}) for r in straight.results
    ]


async def test_prose_mentioning_no_objection_does_not_stop_early() -> None:
    """'No objection to X, but ...' is a critique, not agreement: the rounds go on."""

    def answer(phase: str, req: ChatRequest) -> str:
        if phase == "critique":
            return "\n".join(
                f"### {t}\nI have no objection to the idea, but it crashes on []." for t in _targets(req)
            )
        return default_answer(phase, req)

    _, _, _, report = await _run(BASE + "protocol: {critique_rounds: 2}\n", answer)
    assert all(not r.early_stopped and r.rounds_run == 2 for r in report.results)


async def test_a_backend_failure_is_not_checkpointed_so_a_retry_redoes_the_work() -> None:
    """After a failed batch no checkpoint is saved; the retry reruns from the last good phase."""
    from swe_fleet.errors import LLMError

    class FailsInVote(ScriptedLLM):
        async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
            if _phase(batch[0]) == "vote":
                raise LLMError("engine died", backend="engine")
            return await super().generate(batch)

    spec = CouncilSpec.from_text(BASE)
    store = MemoryCheckpoints()
    await run_deliberation(
        spec,
        submission_id="s",
        generator=FailsInVote(default_answer),
        publisher=Recorder(),
        checkpoints=store,
    )
    good = ["propose", "critique.1", "revise.1"]
    assert json.loads(store.saved["s"])["done"] == {"t1": good, "t2": good}
    llm = ScriptedLLM(default_answer)
    report = await run_deliberation(
        spec, submission_id="s", generator=llm, publisher=Recorder(), checkpoints=store
    )
    assert [(_task_of(b[0]), _phase(b[0])) for b in llm.batches] == [("t1", "vote"), ("t2", "vote")]
    assert all(r.winner for r in report.results)


async def test_a_pipelined_task_whose_batch_failed_is_redone_alone() -> None:
    """t2's critique batch fails in the backend while t1 goes on: the checkpoint keeps t1's
    every phase and t2's propose; the retry asks only for t2's critique, revise and vote."""
    from swe_fleet.errors import LLMError

    class FailsForT2(ScriptedLLM):
        async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
            if _phase(batch[0]) == "critique" and _task_of(batch[0]) == "t2":
                raise LLMError("engine died", backend="engine")
            return await super().generate(batch)

    spec = CouncilSpec.from_text(BASE)
    store = MemoryCheckpoints()
    first = await run_deliberation(
        spec, submission_id="s", generator=FailsForT2(default_answer), publisher=Recorder(), checkpoints=store
    )
    assert [(r.task_id, r.outcome) for r in first.results] == [("t1", "decided"), ("t2", "decided")]
    saved = json.loads(store.saved["s"])["done"]
    assert saved == {"t1": ["propose", "critique.1", "revise.1", "vote"], "t2": ["propose"]}
    llm = ScriptedLLM(default_answer)
    report = await run_deliberation(
        spec, submission_id="s", generator=llm, publisher=Recorder(), checkpoints=store
    )
    assert [(_task_of(b[0]), _phase(b[0])) for b in llm.batches] == [
        ("t2", "critique"), ("t2", "revise"), ("t2", "vote")]  # fmt: skip
    assert report.resumed_after == {"t1": "vote", "t2": "propose"}
    assert all(r.winner for r in report.results)


async def test_a_checkpoint_of_another_spec_is_refused() -> None:
    """Reusing a submission id with a different spec fails clearly instead of resuming wrong state."""
    from swe_fleet.errors import CheckpointMismatch

    store = MemoryCheckpoints()
    await run_deliberation(
        CouncilSpec.from_text(BASE),
        submission_id="s",
        generator=ScriptedLLM(default_answer),
        publisher=Recorder(),
        checkpoints=store,
    )
    other = CouncilSpec.from_text(BASE.replace("second task", "another task"))
    with pytest.raises(CheckpointMismatch, match="another spec"):
        await run_deliberation(
            other,
            submission_id="s",
            generator=ScriptedLLM(default_answer),
            publisher=Recorder(),
            checkpoints=store,
        )


async def test_every_planned_slot_ends_in_exactly_one_event() -> None:
    """Mixed failures (a failed proposal, a critique naming nobody, an unparseable vote, an early
    stop): every task has exactly agents x (2 + 2 x rounds_run) agent events, one per slot,
    and its transcript lists exactly those keys."""

    def answer(phase: str, req: ChatRequest) -> str:
        task, agent = _task_of(req), _agent_of(req)
        if phase == "propose" and (task, agent) == ("t2", "b"):
            return "   "  # empty: a failed proposal
        if phase == "critique" and task == "t1":
            return "\n".join(f"**{t.upper()}**\nNO OBJECTION" for t in _targets(req))  # early stop
        if phase == "critique" and agent == "c":
            return "Looks fine overall."  # no sections: the whole text goes to each target
        if phase == "vote" and agent == "a":
            return "no idea"
        return default_answer(phase, req)

    spec, _, pub, report = await _run(BASE + "protocol: {critique_rounds: 2}\n", answer)
    results = {r.task_id: r for r in report.results}
    assert (results["t1"].rounds_run, results["t1"].early_stopped) == (1, True)
    assert (results["t2"].rounds_run, results["t2"].early_stopped) == (2, False)
    for task in spec.tasks:
        slots = Counter(
            (e.phase, e.round, e.agent_id)
            for e in pub.events
            if e.task_id == task.id and not isinstance(e, DeliberationCompleted)
        )
        rounds = results[task.id].rounds_run
        planned = [("propose", 0), ("vote", 0)] + [
            (p, r) for r in range(1, rounds + 1) for p in ("critique", "revise")
        ]
        assert slots == Counter((p, r, a.id) for p, r in planned for a in spec.agents)
        keys = [
            e.key for e in pub.events if e.task_id == task.id and not isinstance(e, DeliberationCompleted)
        ]
        assert results[task.id].transcript == keys
    # b's empty proposal on t2: nothing to revise in either round, still one event each
    b_t2 = {
        (e.phase, e.round): e for e in pub.events if e.task_id == "t2" and getattr(e, "agent_id", "") == "b"
    }
    assert isinstance(b_t2[("propose", 0)], AgentResponseFailed)
    assert all(isinstance(b_t2[("revise", r)], AgentResponseFailed) for r in (1, 2))
    # a's votes failed: 2 of 3 counted on each task, still the default quorum (2)
    assert all((r.votes_counted, r.quorum) == (2, 2) and r.outcome != "failed" for r in report.results)


@pytest.mark.parametrize("schedule", ["pipelined", "barrier"])
async def test_tasks_may_name_their_agents_and_answer_length(schedule: str) -> None:
    """t1 is deliberated by a and b only, with answers up to 10 tokens; t2 by everyone at the
    model's length: requests, events, votes and the ranking follow each task's own agents."""
    from tests.support.councils import planned_slots

    text = (
        "name: p\n"
        "tasks: [{id: t1, prompt: first task, agents: [a, b], max_tokens: 10},"
        " {id: t2, prompt: second task}]\n"
        "agents: [{id: a, role: architect}, {id: b, role: developer}, {id: c, role: qa}]\n"
        f"protocol: {{early_stop: false, schedule: {schedule}}}\n"
    )
    spec, llm, pub, report = await _run(text)
    requests = [r for b in llm.batches for r in b]
    t1 = [r for r in requests if _task_of(r) == "t1"]
    assert {_agent_of(r) for r in t1} == {"a", "b"}
    assert {r.max_tokens for r in t1 if not r.json_schema} == {10}
    assert {r.max_tokens for r in requests if _task_of(r) == "t2" and not r.json_schema} == {
        spec.model.max_tokens
    }
    came = Counter(
        (e.task_id, e.phase, e.round, e.agent_id)
        for e in pub.events
        if not isinstance(e, DeliberationCompleted)
    )
    assert came == planned_slots(spec, {"t1": 1, "t2": 1})
    assert [[x.agent_id for x in r.ranking] for r in report.results] == [["b", "a"], ["c", "b", "a"]]
    assert "### c" not in next(r for r in t1 if r.json_schema).messages[-1]["content"]
