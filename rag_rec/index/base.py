"""The vector store interface every index backend implements (embedded Qdrant edge, Qdrant server/local)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rag_rec.constants import RRF_K  # the stores' default; re-exported for their modules

DISTANCES = ("cosine", "dot", "euclid")
PAYLOAD_INDEX_TYPES = ("keyword", "integer", "float", "bool", "text")

# Payload keys the stores maintain themselves (see docs/INDEX.md).
PID_KEY = "pid"  # the original string id (point ids are UUID5 of it)
CATEGORY_PATHS_KEY = "category_paths"  # every prefix of payload 'category', joined with CATEGORY_SEPARATOR
CATEGORY_SEPARATOR = " > "
RESERVED_PAYLOAD_KEYS = (PID_KEY, CATEGORY_PATHS_KEY)

# Payload indexes of the product collection: filter fields of Filter / schemas.Filters.
PRODUCT_PAYLOAD_INDEXES: dict[str, str] = {
    "category": "keyword",
    "brand": "keyword",
    "price": "float",
    "in_stock": "bool",
}


@dataclass(frozen=True)
class VectorSpec:
    """A named vector of the collection, e.g. VectorSpec('text', 384) or VectorSpec('cf', 64)."""

    name: str
    dim: int
    distance: str = "cosine"  # cosine | dot | euclid


@dataclass(frozen=True)
class Record:
    """One product point: string id, named vectors (may omit some), payload.

    Vectors read back from a cosine vector are L2-normalised (the engine stores them that way).
    """

    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Filter:
    """Conjunctive payload filter. Ranges are inclusive; None means unbounded.

    must_match on a list-valued payload field (e.g. 'category') matches when any element matches;
    a list/tuple/set value matches any of its values.
    """

    must_match: dict[str, Any] = field(default_factory=dict)  # field == value (or value in list)
    must_not_ids: tuple[str, ...] = ()
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    category_prefix: tuple[str, ...] = ()  # payload 'category' path starts with


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prefetch:
    """One branch of a fused query: a vector query on one named vector; weight scales its RRF share. `finite`: the
    caller vouches that the values are finite (vectors from the signals' own arrays), so stores skip that check."""

    using: str
    vector: np.ndarray
    limit: int = 100
    weight: float = 1.0
    finite: bool = False


@runtime_checkable
class VectorStore(Protocol):
    """A product index with named vectors and payload filters. Upserts are idempotent by id."""

    def ensure_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        """Create the collection if absent; raise IndexStoreError if it exists with other dimensions."""

    def recreate_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        """Replace the collection with an empty one of this layout (whole or not at all); its points are gone."""

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records (same id -> replaced, never duplicated). All-or-nothing per call."""

    def delete(self, ids: Sequence[str]) -> None: ...

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Merge payload keys into existing points (unknown ids are skipped)."""

    def count(self) -> int: ...

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        """Records for the ids that exist (unknown ids are skipped)."""

    def search(
        self, using: str, vector: np.ndarray, limit: int, flt: Filter | None = None, *, exact: bool = False
    ) -> list[Hit]:
        """Nearest neighbours on one named vector (exact=True: brute force instead of HNSW)."""

    def fused_search(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> list[Hit]:
        """Reciprocal-rank fusion of several prefetch branches (Qdrant prefetch + RRF with constant rrf_k)."""

    def fused_ids(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> list[str]:
        """fused_search's product ids in rank order, without payloads or scores (what retrieval needs)."""

    def fused_keys(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> np.ndarray:
        """fused_ids as this store's integer keys (int64, rank order), for callers that keep arrays by key."""

    def point_keys(self, ids: Sequence[str]) -> np.ndarray:
        """The integer key of each product id (int64): stable for this store's lifetime, distinct per id,
        small and dense (arrays indexed by key stay small); -1 or a key no hit carries for an unknown id."""

    def optimize(self) -> None:
        """Build the HNSW / payload indexes now; a no-op where the engine does it in the background."""

    def warm(self) -> None:
        """Build in-memory lookups now instead of on the first query; a no-op where there are none."""

    def close(self) -> None: ...
