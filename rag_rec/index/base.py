"""The vector store interface every index backend implements (embedded Qdrant edge, Qdrant server/local)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class VectorSpec:
    """A named vector of the collection, e.g. VectorSpec('text', 384) or VectorSpec('cf', 64)."""

    name: str
    dim: int
    distance: str = "cosine"  # cosine | dot


@dataclass(frozen=True)
class Record:
    """One product point: string id, named vectors (may omit some), payload."""

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Filter:
    """Conjunctive payload filter. Ranges are inclusive; None means unbounded."""

    must_match: dict[str, Any] = field(default_factory=dict)        # field == value (or value in list)
    must_not_ids: tuple[str, ...] = ()
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    category_prefix: tuple[str, ...] = ()                           # payload 'category' path starts with


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prefetch:
    """One branch of a fused query: a vector query on one named vector."""

    using: str
    vector: np.ndarray
    limit: int = 100


@runtime_checkable
class VectorStore(Protocol):
    """A product index with named vectors and payload filters. Upserts are idempotent by id."""

    def ensure_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        """Create the collection if absent; raise IndexStoreError if it exists with other dimensions."""

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records (same id -> replaced, never duplicated). All-or-nothing per call."""

    def delete(self, ids: Sequence[str]) -> None: ...

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None: ...

    def count(self) -> int: ...

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """Records for the ids that exist (unknown ids are skipped)."""

    def search(self, using: str, vector: np.ndarray, limit: int, flt: Filter | None = None) -> list[Hit]:
        """Nearest neighbours on one named vector."""

    def fused_search(self, prefetches: Sequence[Prefetch], limit: int, flt: Filter | None = None) -> list[Hit]:
        """Reciprocal-rank fusion of several prefetch branches (Qdrant prefetch + RRF)."""

    def close(self) -> None: ...
