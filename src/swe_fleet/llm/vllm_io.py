"""Between swe-fleet's chat types and vLLM's: sampling parameters for a
:class:`~swe_fleet.llm.base.ChatRequest`, a :class:`~swe_fleet.llm.base.Completion` from vLLM's
output, request ids and prompt token counts. Used by the engine actor
(:mod:`swe_fleet.llm.engine_actor`); vLLM is imported only when a function needs it, so the
driver, which imports the actor class, never loads vLLM.
"""

from __future__ import annotations

from typing import Any

from swe_fleet.llm.base import ChatRequest, Completion, TokenChoice


def sampling_params(req: ChatRequest) -> Any:
    """vLLM's ``SamplingParams`` for ``req`` (its JSON schema as structured output, its top
    logprobs when asked)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        seed=req.seed,
        structured_outputs=StructuredOutputsParams(json=req.json_schema) if req.json_schema else None,
        logprobs=req.top_logprobs or None,
    )


def completion(out: Any) -> Completion:
    """A finished vLLM ``RequestOutput`` as a :class:`~swe_fleet.llm.base.Completion`."""
    first = out.outputs[0]
    return Completion(
        text=first.text,
        prompt_tokens=len(out.prompt_token_ids or []),
        output_tokens=len(first.token_ids),
        finish_reason=first.finish_reason,
        tokens=token_choices(first.token_ids, first.logprobs),
    )


def external_id(internal: str) -> str:
    """The request id vLLM's outputs carry, from the internal one ``enqueue_chat`` returns: vLLM
    appends ``-`` and 8 random characters to the id it was given (``LLM``'s counter: digits
    only), unless ``VLLM_DISABLE_REQUEST_ID_RANDOMIZATION`` is set."""
    return internal.rsplit("-", 1)[0]


def token_choices(token_ids: Any, logprobs: Any) -> tuple[TokenChoice, ...]:
    """vLLM's per-position ``{token_id: Logprob}`` (top-k plus the sampled token) as
    :data:`~swe_fleet.llm.base.TokenChoice` s; empty when none were asked for."""
    if not logprobs:
        return ()
    out = []
    for token_id, position in zip(token_ids, logprobs, strict=False):
        chosen = position.get(token_id)
        alternatives = tuple((lp.decoded_token or "", float(lp.logprob)) for lp in position.values())
        out.append(((chosen.decoded_token or "") if chosen is not None else "", alternatives))
    return tuple(out)


def count_prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """How many tokens ``messages`` take as a prompt (chat template and generation prompt)."""
    # transformers 5 returns a BatchEncoding unless asked for plain ids.
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return len(ids)
