"""Chat requests and completions, and the :class:`Generator` protocol every LLM backend follows.

Pure data and protocols: the council's deliberation talks to this and never asks which backend
it has (:mod:`~swe_fleet.llm.engine`, :mod:`~swe_fleet.llm.server`, or :class:`UnavailableBackend`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        top_logprobs: when above 0, the completion carries, for each generated token, the
            probabilities of this many most likely tokens at that position (:attr:`Completion.tokens`).
    """

    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    top_logprobs: int = 0


#: One generated token: its text, and the most likely tokens at its position as
#: ``(text, logprob)`` (the generated one among them).
TokenChoice = tuple[str, tuple[tuple[str, float], ...]]


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
    #: Per generated token, when the request asked for ``top_logprobs`` (else empty).
    tokens: tuple[TokenChoice, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ModelLimits:
    """The context a council's requests must fit, where that figure came from, and (when the
    model's files are at hand) a token counter and the model's own limit; read by
    :func:`swe_fleet.llm.limits.model_limits`, checked by :mod:`swe_fleet.council.budget`."""

    context: int | None
    source: str
    count_tokens: Callable[[str], int] | None = None
    #: Known limit of the model itself (``max_position_embeddings``), when readable.
    model_max: int | None = None


@dataclass
class BatchStats:
    """What a backend did: how many calls, requests and tokens (for tests and benchmarks).

    Attributes:
        per_replica_calls: calls the generator sent to each engine replica.
        replica_calls: calls each replica says it served (counted inside the engine, read when
            the generator closes; None for a replica that was lost). Empty for other backends.
        replica_timelines: for each replica that answered when the generator closed (in replica
            order; a lost one is left out), ``(wall time, requests in flight)`` samples of its
            running batch. Empty for other backends.
    """

    calls: int = 0
    requests: int = 0
    output_tokens: int = 0
    generate_seconds: float = 0.0
    per_replica_calls: dict[int, int] = field(default_factory=dict)
    replica_calls: list[int | None] = field(default_factory=list)
    replica_timelines: list[list[tuple[float, int]]] = field(default_factory=list)


class Generator(Protocol):
    """An LLM backend: started once, completes batches of chat requests keeping their order, and
    closed at the end. ``stats`` says what it did."""

    @property
    def stats(self) -> BatchStats:
        """What the backend did so far."""
        ...

    async def start(self) -> None:
        """Get ready to generate (load the model, wait for the server), bounded.

        Raises:
            LLMError: the backend cannot serve (naming why).
        """
        ...

    async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
        """Complete every request; ``result[i]`` answers ``batch[i]``."""
        ...

    async def close(self) -> None:
        """Release the backend's resources."""
        ...


class UnavailableBackend:
    """A generator that fails every request with one reason (the real backend never started):
    the council still publishes a failed event per agent response and a result per task."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self._stats = BatchStats()

    @property
    def stats(self) -> BatchStats:
        return self._stats

    async def start(self) -> None:
        return None

    async def generate(self, batch: Sequence[ChatRequest]) -> list[Completion]:
        return [Completion(text="", error=self.reason) for _ in batch]

    async def close(self) -> None:
        return None
