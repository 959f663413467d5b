"""The retrieval interface: a request in, fused candidates with per-source scores and provenance out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from rag_rec.index.base import Filter


@dataclass(frozen=True)
class RetrievalRequest:
    user_id: str | None = None
    anchors: tuple[str, ...] = ()
    need: str | None = None
    filter: Filter | None = None
    k: int = 20


class Candidate:
    """A retrieved product: its fused score, the contribution of each source to it (`sources`), evidence (e.g.
    {"co_purchases": 4}) and payload (e.g. {"found_by": ["cooc", "text"]}).

    The online retriever hands contributions over as its ranked rows (`from_ranked`); the `sources` dict is built on
    first read. Nothing on the serving path reads it (composers and the API use the score, the evidence and
    `found_by`), and building 40 such dicts was ~40% of a request's candidate cost."""

    __slots__ = ("id", "score", "evidence", "payload", "_sources", "_row")

    def __init__(self, id: str, score: float, sources: dict[str, float] | None = None,
                 evidence: dict[str, object] | None = None, payload: dict[str, object] | None = None):
        self.id, self.score = id, score
        self._sources, self._row = ({} if sources is None else sources), None
        self.evidence = {} if evidence is None else evidence
        self.payload = {} if payload is None else payload

    @classmethod
    def from_ranked(cls, ids: list[str], ranked: np.ndarray, names: tuple[str, ...], first: int,
                    found_by: Callable[[int], tuple[str, ...]], with_counts: bool) -> list[Candidate]:
        """Candidates in rank order from rows (score, co-purchases, provenance code, one contribution per name from
        column `first` on); `found_by(code)` gives the provenance labels. Their `sources` are read from the row when
        first asked for."""
        new, out, labels = cls.__new__, [], {}
        for r, (item, (score, count, code)) in enumerate(zip(ids, ranked[:, :3].tolist())):
            found = labels.get(code)
            if found is None:
                found = labels[code] = found_by(int(code))
            candidate = new(cls)
            candidate.id, candidate.score, candidate.payload = item, score, {"found_by": list(found)}
            candidate.evidence = {"co_purchases": int(count)} if with_counts else {}
            candidate._sources, candidate._row = None, (names, ranked, r, first)
            out.append(candidate)
        return out

    @property
    def sources(self) -> dict[str, float]:
        """source -> its fused contribution."""
        sources = self._sources
        if sources is None:
            names, ranked, r, first = self._row
            sources = self._sources = dict(zip(names, ranked[r, first:].tolist()))
        return sources

    @sources.setter
    def sources(self, value: dict[str, float]) -> None:
        self._sources, self._row = value, None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candidate):
            return NotImplemented
        return (self.id, self.score, self.sources, self.evidence, self.payload) == (
            other.id, other.score, other.sources, other.evidence, other.payload)

    __hash__ = None

    def __repr__(self) -> str:
        return (f"Candidate(id={self.id!r}, score={self.score!r}, sources={self.sources!r}, "
                f"evidence={self.evidence!r}, payload={self.payload!r})")


@dataclass
class RetrievalResult:
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)              # unknown ids, cold-start paths taken, ...
    paths: list[str] = field(default_factory=list)              # which sources ran


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, request: RetrievalRequest) -> RetrievalResult: ...
