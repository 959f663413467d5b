"""The LLM backend interface: batched chat generation with optional JSON-schema-constrained output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rag_rec.errors import RagRecError


class LLMUnavailable(RagRecError):
    """The LLM cannot answer: the engine died, the server is unreachable or it refused the request."""


@dataclass(frozen=True)
class GenerationRequest:
    messages: list[dict[str, str]]                    # [{"role": "system"|"user"|"assistant", "content": ...}]
    json_schema: dict[str, Any] | None = None         # constrain output to this schema (structured outputs)
    max_tokens: int = 384
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_emoji: bool = False  # no emoji or other 4-byte characters: small models' runaways (in-process engine only)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LLMBackend(Protocol):
    """Generates completions for a batch of chat requests, in order. Raises LLMUnavailable on transport errors."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]: ...

    def close(self) -> None: ...
