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


class _RankedRows:
    """What a request's candidates share: the ranked rows and how to read a row's labels and contributions."""

    __slots__ = ("ranked", "names", "first", "found_by", "with_counts", "surplus")

    def __init__(self, ranked: np.ndarray, names: tuple[str, ...], first: int,
                 found_by: Callable[[int], tuple[str, ...]], with_counts: bool,
                 surplus: Callable[[int], float] | None = None):
        self.ranked, self.names, self.first, self.found_by, self.with_counts, self.surplus = (
            ranked, names, first, found_by, with_counts, surplus)

    def sources(self, r: int) -> dict[str, float]:
        return dict(zip(self.names, self.ranked[r, self.first:].tolist()))

    def evidence(self, r: int) -> dict[str, object]:
        if not self.with_counts:
            return {}
        count = float(self.ranked[r, 1]) - (self.surplus(r) if self.surplus is not None else 0.0)
        return {"co_purchases": max(0, round(count))}  # sessions and bundles holding both, each once

    def payload(self, r: int) -> dict[str, object]:
        return {"found_by": list(self.found_by(int(self.ranked[r, 2])))}


class _FromRow:
    """A candidate's dict field (`sources`, `evidence`, `payload`): kept in the slot of the same name with a leading
    underscore; when that is None, built from the candidate's ranked row by the _RankedRows method of its name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot, self.build = getattr(owner, "_" + name), getattr(_RankedRows, name)

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = self.slot.__get__(obj)
        if value is None:
            shared, r = obj._row
            value = self.build(shared, r)
            self.slot.__set__(obj, value)
        return value

    def __set__(self, obj, value) -> None:
        self.slot.__set__(obj, value)


class Candidate:
    """A retrieved product: its fused score, the contribution of each source to it (`sources`), evidence (e.g.
    {"co_purchases": 4}) and payload (e.g. {"found_by": ["cooc", "text"]}).

    The online retriever hands candidates over as its ranked rows (`from_ranked`); `sources`, `evidence` and
    `payload` are built from the row on first read. The serving path reads evidence and payload only for the few
    candidates that end up in a bundle, and sources never; building all three for 40 candidates was most of a
    request's candidate cost."""

    __slots__ = ("id", "score", "_evidence", "_payload", "_sources", "_row")

    def __init__(self, id: str, score: float, sources: dict[str, float] | None = None,
                 evidence: dict[str, object] | None = None, payload: dict[str, object] | None = None):
        self.id, self.score, self._row = id, score, None
        self._sources = {} if sources is None else sources
        self._evidence = {} if evidence is None else evidence
        self._payload = {} if payload is None else payload

    @classmethod
    def from_ranked(cls, ids: list[str], ranked: np.ndarray, names: tuple[str, ...], first: int,
                    found_by: Callable[[int], tuple[str, ...]], with_counts: bool,
                    surplus: Callable[[int], float] | None = None) -> list[Candidate]:
        """Candidates in rank order from rows (score, co-occurrence count, provenance code, one contribution per name
        from column `first` on); `found_by(code)` gives the provenance labels, `surplus(row)` what weighting added
        to the row's count. Their sources, evidence and payload are read from the row when first asked for."""
        shared, new, out = _RankedRows(ranked, names, first, found_by, with_counts, surplus), cls.__new__, []
        for r, (item, score) in enumerate(zip(ids, ranked[:, 0].tolist())):
            candidate = new(cls)
            candidate.id, candidate.score, candidate._row = item, score, (shared, r)
            candidate._sources = candidate._evidence = candidate._payload = None
            out.append(candidate)
        return out

    sources = _FromRow()  # source -> its fused contribution
    evidence = _FromRow()
    payload = _FromRow()

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
