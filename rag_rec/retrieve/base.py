"""The retrieval interface: a request in, fused candidates with per-source scores and provenance out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from rag_rec.index.base import Filter


@dataclass(frozen=True)
class RetrievalRequest:
    user_id: str | None = None
    anchors: tuple[str, ...] = ()
    need: str | None = None
    filter: Filter | None = None
    k: int = 20


@dataclass(slots=True)
class Candidate:
    id: str
    score: float
    sources: dict[str, float] = field(default_factory=dict)      # source -> its fused contribution
    evidence: dict[str, object] = field(default_factory=dict)    # e.g. {"co_purchases": 4}
    payload: dict[str, object] = field(default_factory=dict)


@dataclass
class RetrievalResult:
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)              # unknown ids, cold-start paths taken, ...
    paths: list[str] = field(default_factory=list)              # which sources ran


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, request: RetrievalRequest) -> RetrievalResult: ...
