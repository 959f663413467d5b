"""The compose interface: retrieved candidates in, grounded bundles with reasons out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence, runtime_checkable

from rag_rec.data.models import Product
from rag_rec.retrieve.base import Candidate

ProducedBy = Literal["llm", "llm_repaired", "fallback", "heuristic"]


@dataclass(frozen=True)
class ComposeContext:
    candidates: Sequence[Candidate]
    products: dict[str, Product]              # at least every candidate and anchor
    anchors: tuple[str, ...] = ()
    need: str | None = None
    user_history: tuple[str, ...] = ()
    k: int = 3
    bundle_size: int = 3
    budget: float | None = None


@dataclass
class ComposedBundle:
    title: str
    items: tuple[str, ...]
    reason: str
    score: float = 0.0


@dataclass
class ComposeResult:
    bundles: list[ComposedBundle]
    produced_by: ProducedBy
    model: str | None = None
    notes: list[str] = field(default_factory=list)
    raw: str | None = None


@runtime_checkable
class Composer(Protocol):
    """Builds up to k bundles from the candidates only; anchors may be included in bundles."""

    name: str

    def compose(self, context: ComposeContext) -> ComposeResult: ...

    def compose_many(self, contexts: Sequence[ComposeContext]) -> list[ComposeResult]: ...
