"""Token budgets: does every request a council plans fit the model's context?

Pure: the context length and a token counter come from the caller
(:func:`swe_fleet.llm.limits.model_limits` reads them from the model's files or the server);
:func:`check_token_budget` refuses a spec that cannot fit, naming the field (``submit``, ``run``,
``doctor`` exit 3; the dispatcher dead-letters the request).
A request's prompt plus its output limit must fit the context; the fixed part of each prompt
(the council prompt, the task, the agent's role and what it is asked) is known before the
council runs. Quoted proposals and critiques are cut to ``protocol.max_proposal_chars`` and
``max_critique_chars``; a prompt they still make too long fails that one response at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from swe_fleet.council.prompts import chat_request, task_context
from swe_fleet.council.ranking import vote_token_budget
from swe_fleet.errors import SpecError
from swe_fleet.llm.base import ModelLimits
from swe_fleet.spec import CouncilSpec

#: Tokens a chat template adds around two messages (role markers, turn separators; SmolLM2's
#: adds 11, Llama 3's 17): a margin, not a measurement of every template.
TEMPLATE_TOKENS = 32


@dataclass(frozen=True)
class BudgetProblem:
    """One request that cannot fit: the spec field to change, and by how much."""

    field: str
    message: str


def token_budget_problems(
    spec: CouncilSpec, context: int, count_tokens: Callable[[str], int] | None = None, *, source: str = ""
) -> list[BudgetProblem]:
    """Every budget that does not fit ``context`` tokens (``source`` says where that came from).

    Without ``count_tokens`` only the output limits are checked against the context; with it,
    each proposal prompt (the longest fixed part: every later prompt quotes proposals, whose
    length the spec bounds in characters) must leave room for ``model.max_tokens``.
    """
    where = f" ({source})" if source else ""
    problems: list[BudgetProblem] = []
    ids = [a.id for a in spec.agents]
    vote_tokens = max(
        vote_token_budget([c for c in ids if c != voter], spec.model.vote_max_tokens) for voter in ids
    )
    longest = max(spec.for_task(t).model.max_tokens for t in spec.tasks)
    for field, tokens in (
        ("model.max_tokens" if longest == spec.model.max_tokens else "tasks.*.max_tokens", longest),
        ("model.vote_max_tokens", vote_tokens),
    ):
        if tokens >= context:
            problems.append(
                BudgetProblem(
                    field,
                    f"{tokens} output tokens leave no room for a prompt in the model's context of "
                    f"{context} tokens{where}; ask for fewer (a few hundred at most on this context)",
                )
            )
    if count_tokens is None or problems:
        return problems
    for i, task in enumerate(spec.tasks):
        narrowed = spec.for_task(task)
        for agent in narrowed.agents:
            request = chat_request(narrowed, agent, task_context(task), "Propose a solution.")
            prompt = sum(count_tokens(m["content"]) for m in request.messages) + TEMPLATE_TOKENS
            if prompt + request.max_tokens > context:
                problems.append(
                    BudgetProblem(
                        f"tasks.{i}.prompt",
                        f"the proposal prompt of task {task.id!r} for agent {agent.id!r} is about {prompt} "
                        f"tokens; with max_tokens {request.max_tokens} it exceeds the model's "
                        f"context of {context} tokens{where}: shorten the prompt or lower max_tokens",
                    )
                )
                break  # one problem per task is enough to act on
    return problems


def check_token_budget(spec: CouncilSpec, limits: ModelLimits, *, source: str = "<spec>") -> str:
    """One line saying what was checked; a spec whose budgets cannot fit raises.

    Raises:
        SpecError: naming the first field to change (and how many more problems there are).
    """
    problems: list[BudgetProblem] = []
    if spec.backend == "engine" and limits.model_max and spec.model.max_model_len > limits.model_max:
        problems.append(
            BudgetProblem(
                "model.max_model_len",
                f"{spec.model.max_model_len} is more than the model takes ({limits.model_max} tokens, "
                "max_position_embeddings in its config.json); vLLM would refuse to start",
            )
        )
    if limits.context is not None:
        problems += token_budget_problems(spec, limits.context, limits.count_tokens, source=limits.source)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(problems[0].message + more, source=source, field=problems[0].field)
    if limits.context is None:
        return f"token budget not checked: the context is unknown here ({limits.source})"
    counted = "prompts counted" if limits.count_tokens else "prompts not counted: no tokenizer here"
    return f"token budget fits the context of {limits.context} tokens ({limits.source}; {counted})"
