"""What each agent is asked: the prompt layout shared by every phase.

Every request is ``[system: the council prompt (the same for everyone), user: <context of the
task> + <who this agent is> + <what it must do now>]``. The context (the task and, for critique
and vote, *every* current proposal of the task, in spec order) is the same text for every agent
of a task, and the agent's role and role prompt come after it, so an engine with prefix caching
(vLLM's default) computes that context once per task instead of once per agent.
"""

from __future__ import annotations

from typing import Any

from swe_fleet.council.state import TaskState
from swe_fleet.llm.base import ChatRequest
from swe_fleet.spec import AgentSpec, CouncilSpec, TaskSpec


def shorten(text: str, limit: int) -> str:
    """Keep the first ``limit`` characters and say how many were cut (deterministic)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit} characters cut]"


def _role(agent: AgentSpec) -> str:
    return f"You are {agent.id}, the council's {agent.role}. {agent.resolved_role_prompt()}"


def chat_request(spec: CouncilSpec, agent: AgentSpec, context: str, ask: str, **kw: Any) -> ChatRequest:
    """``context`` is shared by every agent of the task; the agent's role and ``ask`` follow it."""
    return ChatRequest(
        messages=(
            {"role": "system", "content": spec.protocol.council_prompt},
            {"role": "user", "content": f"{context}\n\n{_role(agent)}\n\n{ask}"},
        ),
        max_tokens=kw.pop("max_tokens", spec.model.max_tokens),
        temperature=spec.model.temperature,
        seed=spec.model.seed,
        **kw,
    )


CURRENT_PROPOSALS = "The council's current proposals:"


def task_context(task: TaskSpec) -> str:
    """The task as every agent sees it first."""
    return f"Task {task.id}:\n{task.prompt}"


def proposals_context(spec: CouncilSpec, task: TaskSpec, state: TaskState, heading: str) -> str:
    """The task and every standing proposal of it (spec order, each cut to max_proposal_chars)."""
    limit = spec.protocol.max_proposal_chars
    listing = "\n\n".join(
        f"### {a.id}\n{shorten(state.proposals[a.id], limit)}" for a in spec.agents if a.id in state.proposals
    )
    return f"{task_context(task)}\n\n{heading}\n\n{listing}"
