"""Validation and payload conventions shared by the index backends."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rag_rec.errors import IncompatibleIndexError, IndexStoreError
from rag_rec.index.base import (
    CATEGORY_PATHS_KEY,
    CATEGORY_SEPARATOR,
    DISTANCES,
    PAYLOAD_INDEX_TYPES,
    PID_KEY,
    RESERVED_PAYLOAD_KEYS,
    Record,
    VectorSpec,
)

_POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "rag_rec/product")
TIE_BREAK = 2.0 ** -12


def fusion_weights(prefetches: Sequence) -> list[float]:
    """Each branch's RRF weight, scaled down by TIE_BREAK per place in the branch order. Unweighted, a hit at rank r
    in one branch alone scores exactly what rank r in another branch alone scores, and the engine orders tied
    points differently from one call to the next: the same request could fill its last places with different
    products (one request in five at 92k products). Scaled, the earlier branch wins such a tie, and a score moves
    by at most TIE_BREAK / 4 per place (well under the gap between adjacent ranks)."""
    return [float(p.weight) * (1.0 - b * TIE_BREAK) for b, p in enumerate(prefetches)]


def point_uuid(pid: str) -> str:
    """Deterministic point id for a product id (UUID5, so the same id always lands on the same point)."""
    if not isinstance(pid, str) or not pid:
        raise IndexStoreError(f"product ids must be non-empty strings, got {pid!r}")
    return str(uuid.uuid5(_POINT_NAMESPACE, pid))


def check_specs(vectors: Sequence[VectorSpec]) -> dict[str, VectorSpec]:
    if not vectors:
        raise IndexStoreError("a collection needs at least one named vector")
    specs: dict[str, VectorSpec] = {}
    for spec in vectors:
        if not spec.name or spec.name in specs:
            raise IndexStoreError(f"vector names must be unique and non-empty, got {spec.name!r}")
        if int(spec.dim) <= 0:
            raise IndexStoreError(f"vector '{spec.name}' needs a positive dimension, got {spec.dim}")
        if spec.distance not in DISTANCES:
            raise IndexStoreError(
                f"vector '{spec.name}': distance must be one of {DISTANCES}, got {spec.distance!r}"
            )
        specs[spec.name] = spec
    return specs


def check_compatible(
    collection: str, existing: Mapping[str, VectorSpec], wanted: Mapping[str, VectorSpec]
) -> None:
    """Raise unless every wanted vector exists with the same dimension and distance."""
    for name, spec in wanted.items():
        have = existing.get(name)
        if have is None:
            raise IncompatibleIndexError(
                f"collection '{collection}' has no vector '{name}' (it has {sorted(existing)}); "
                "rebuild the index (rag-rec index)"
            )
        if have.dim != spec.dim or have.distance != spec.distance:
            raise IncompatibleIndexError(
                f"collection '{collection}' has vector '{name}' with dim {have.dim} ({have.distance}), "
                f"requested dim {spec.dim} ({spec.distance}); rebuild the index (rag-rec index) or use another "
                "collection"
            )


def check_payload_indexes(payload_indexes: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for field_name, kind in payload_indexes.items():
        if kind not in PAYLOAD_INDEX_TYPES:
            raise IndexStoreError(
                f"payload index on '{field_name}': type must be one of {PAYLOAD_INDEX_TYPES}, got {kind!r}"
            )
        out[field_name] = kind
    out.setdefault(CATEGORY_PATHS_KEY, "keyword")
    return out


def payload_links(field_name: str, kind: str) -> bool:
    """Whether Qdrant builds payload-aware HNSW links (per-value subgraphs for filtered search) for a field.

    Only user keyword fields (category, brand): their values are selective filters where extra links keep
    filtered HNSW search accurate. A bool splits the catalogue into two huge halves and numbers are
    filtered by range, so links there only multiply the build time; category_paths filters ride on the
    links of category.
    """
    return kind == "keyword" and field_name != CATEGORY_PATHS_KEY


def vector_values(
    specs: Mapping[str, VectorSpec], name: str, vector: Any, *, what: str = "query", finite: bool = False
) -> list[float]:
    """The vector as a list of floats, after checking its name, dimension and (unless the caller vouches that they
    are `finite`) values."""
    spec = specs.get(name)
    if spec is None:
        raise IndexStoreError(f"unknown vector '{name}' in {what}; the collection has {sorted(specs)}")
    arr = np.asarray(vector, dtype=np.float32)
    if arr.shape != (spec.dim,):
        raise IndexStoreError(f"vector '{name}' has dim {spec.dim}, got shape {arr.shape} in {what}")
    values = arr.tolist()
    # NaN and inf propagate through the sum (float32 values cannot overflow it); cheaper than a numpy ufunc.
    if not finite and not math.isfinite(sum(values)):
        raise IndexStoreError(f"vector '{name}' contains NaN or infinite values in {what}")
    return values


def category_paths(category: Any) -> list[str]:
    """Every prefix of a category path: ['A', 'B'] -> ['A', 'A > B']."""
    if category is None:
        return []
    parts = [category] if isinstance(category, str) else [str(c) for c in category]
    return [CATEGORY_SEPARATOR.join(parts[: i + 1]) for i in range(len(parts))]


def _plain(value: Any, key: str) -> Any:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if math.isinf(value):  # JSON has no infinity, and the embedded engine refuses it
            raise IndexStoreError(f"payload key '{key}' is infinite")
        return None if math.isnan(value) else value
    if isinstance(value, np.generic):
        return _plain(value.item(), key)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        return [_plain(v, key) for v in value]
    raise IndexStoreError(
        f"payload key '{key}' has a value of type {type(value).__name__}, which is not JSON"
    )


def stored_payload(pid: str, payload: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """The payload as stored: JSON values, plus the reserved keys the store maintains."""
    if not partial and (not isinstance(pid, str) or not pid):
        raise IndexStoreError(f"product ids must be non-empty strings, got {pid!r}")
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key in RESERVED_PAYLOAD_KEYS:
            if key == PID_KEY and value == pid and not partial:
                continue
            raise IndexStoreError(f"payload key '{key}' is reserved by the index")
        out[key] = _plain(value, key)
    if not partial:
        out[PID_KEY] = pid
    if "category" in out:
        out[CATEGORY_PATHS_KEY] = category_paths(out["category"])
    elif not partial:
        out[CATEGORY_PATHS_KEY] = []
    return out


def public_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    if not payload:
        return {}
    return {k: v for k, v in payload.items() if k not in RESERVED_PAYLOAD_KEYS}


def last_per_id(records: Iterable[Record]) -> list[Record]:
    """Records with duplicate ids collapsed to the last one (what sequential upserts would leave)."""
    latest: dict[str, Record] = {}
    for record in records:
        latest.pop(record.id, None)
        latest[record.id] = record
    return list(latest.values())


def check_range(key: str, low: Any, high: Any) -> tuple[float | None, float | None]:
    """A filter range's bounds as floats; NaN bounds are an error (the embedded engine panics on them)."""
    bounds = tuple(None if b is None else float(b) for b in (low, high))
    if any(b is not None and math.isnan(b) for b in bounds):
        raise IndexStoreError(f"filter range for '{key}' has a NaN bound")
    return bounds


def check_limit(limit: int) -> int:
    limit = int(limit)
    if limit < 0:
        raise IndexStoreError(f"limit must be >= 0, got {limit}")
    return limit


class KeyHandles:
    """Dense integer handles for product ids, handed out on first sight (for backends whose point ids are not
    small integers). Appends only, so concurrent readers see a handle or its absence, never a wrong one."""

    def __init__(self) -> None:
        self._key: dict[str, int] = {}
        self._lock = threading.Lock()

    def of(self, ids: Iterable[str]) -> np.ndarray:
        key = self._key
        out = [key.get(i, -1) for i in ids]
        if -1 in out:
            with self._lock:
                out = [key.get(i) if i in key else key.setdefault(i, len(key)) for i in ids]
        return np.asarray(out, dtype=np.int64)
