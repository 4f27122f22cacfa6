"""Chat requests and completions: what the protocol hands to an LLM backend and gets back.

Pure data plus the :class:`Generator` protocol; backends live in :mod:`swe_fleet.llm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to complete.

    Attributes:
        messages: OpenAI-style ``[{"role": ..., "content": ...}]``.
        max_tokens: output token limit.
        temperature: 0 is greedy (deterministic on this vLLM build).
        seed: per-request seed, for reruns that give the same text when temperature > 0.
        json_schema: when set, the backend constrains the output to this JSON schema if it can.
    """

    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    json_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Completion:
    """The backend's answer to one :class:`ChatRequest` (same position in the batch).

    ``error`` is set (and ``text`` empty) when this one request failed but the batch did not,
    e.g. a prompt longer than the model's context.
    """

    text: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class BatchStats:
    """What a backend did: how many calls, requests and tokens (for tests and benchmarks)."""

    calls: int = 0
    requests: int = 0
    output_tokens: int = 0
    generate_seconds: float = 0.0
    per_replica_calls: dict[int, int] = field(default_factory=dict)


class Generator(Protocol):
    """An LLM backend: completes a batch of chat requests, keeping their order."""

    async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request; ``result[i]`` answers ``batch[i]``."""
        ...

    async def close(self) -> None:
        """Release the backend's resources."""
        ...
