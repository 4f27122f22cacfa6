"""The token budget check before a council is submitted: every request it plans must fit the
model's context (:mod:`swe_fleet.council.budget`), with the limits read from here
(:mod:`swe_fleet.llm.limits`). A spec that cannot fit is refused naming the field: exit 3.
"""

from __future__ import annotations

from swe_fleet.council.budget import BudgetProblem, token_budget_problems
from swe_fleet.errors import SpecError
from swe_fleet.llm.limits import ModelLimits, model_limits
from swe_fleet.spec import CouncilSpec


def check_token_budget(
    spec: CouncilSpec, limits: ModelLimits | None = None, *, source: str = "<spec>"
) -> str:
    """One line saying what was checked; a spec whose budgets cannot fit raises.

    Raises:
        SpecError: naming the first field to change (and how many more problems there are).
    """
    limits = model_limits(spec) if limits is None else limits
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
