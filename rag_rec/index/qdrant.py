"""Qdrant backend via qdrant-client: a server or cluster by URL, or local mode (:memory: or a path)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from rag_rec.errors import IndexStoreError, require
from rag_rec.index.base import (
    CATEGORY_PATHS_KEY,
    CATEGORY_SEPARATOR,
    PID_KEY,
    RRF_K,
    Filter,
    Hit,
    Prefetch,
    Record,
    VectorSpec,
)
from rag_rec.index.common import (
    KeyHandles,
    check_compatible,
    check_limit,
    check_payload_indexes,
    check_range,
    check_specs,
    fusion_weights,
    last_per_id,
    payload_links,
    point_uuid,
    stored_payload,
    vector_values,
)


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


class QdrantStore:
    """A VectorStore on a Qdrant collection via qdrant-client.

    url: 'http(s)://host:6333' (server or cluster; api_key for Qdrant Cloud), or ':memory:'.
    path: a directory for qdrant-client local mode (used when url is None). Local mode is an exact,
    single-process scan meant for tests and small catalogues; it persists point by point, so an upsert
    call is not atomic there. A server applies each upsert call as one operation.
    """

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | Path | None = None,
        api_key: str | None = None,
        collection: str = "products",
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        timeout_s: int = 30,
    ):
        qc = require("qdrant_client", "index")
        self._models = require("qdrant_client.models", "index")
        if url is None and path is None:
            raise IndexStoreError("QdrantStore needs a url (server or ':memory:') or a local path")
        self.collection = collection
        self.location = url if url is not None else str(path)
        self._local = url is None or url == ":memory:"
        self._hnsw = (hnsw_m, hnsw_ef_construct)
        self._specs: dict[str, VectorSpec] = {}
        self._keys = KeyHandles()
        self._closed = False
        try:
            if url == ":memory:":
                self._client = qc.QdrantClient(location=":memory:")
            elif url is not None:
                self._client = qc.QdrantClient(
                    url=url, api_key=api_key, timeout=timeout_s, check_compatibility=False
                )
            else:
                Path(path).mkdir(parents=True, exist_ok=True)
                self._client = qc.QdrantClient(path=str(path))
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            raise self._error(exc, "open") from exc
        self._specs = self._read_specs()

    # ---- plumbing ---------------------------------------------------------------------------------------

    def _error(self, exc: BaseException, action: str) -> IndexStoreError:
        message = str(exc) or type(exc).__name__
        if "already accessed by another instance" in message:
            return IndexStoreError(f"index at {self.location} is locked by another process; close it first")
        return IndexStoreError(
            f"{action} failed on Qdrant collection '{self.collection}' at {self.location}: {message}"
        )

    def _call(self, action: str, fn, *args, **kwargs):
        if self._closed:
            raise IndexStoreError(f"the store for {self.location} is closed")
        try:
            return fn(*args, **kwargs)
        except IndexStoreError:
            raise
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            raise self._error(exc, action) from exc

    def _read_specs(self) -> dict[str, VectorSpec]:
        if not self._call("open", self._client.collection_exists, self.collection):
            return {}
        info = self._call("open", self._client.get_collection, self.collection)
        vectors = info.config.params.vectors
        if not isinstance(vectors, dict):
            raise IndexStoreError(
                f"Qdrant collection '{self.collection}' at {self.location} has an unnamed "
                "vector; rag_rec needs named vectors (rebuild it)"
            )
        names = {"Cosine": "cosine", "Dot": "dot", "Euclid": "euclid"}
        specs = {}
        for name, params in vectors.items():
            distance = getattr(params.distance, "value", str(params.distance))
            specs[name] = VectorSpec(name, int(params.size), names.get(distance, distance.lower()))
        return specs

    def _need_collection(self) -> dict[str, VectorSpec]:
        if self._closed:
            raise IndexStoreError(f"the store for {self.location} is closed")
        if not self._specs:
            raise IndexStoreError(
                f"collection '{self.collection}' does not exist at {self.location}; "
                "call ensure_collection first"
            )
        return self._specs

    @property
    def client(self):
        """The underlying qdrant_client.QdrantClient."""
        return self._client

    @property
    def vectors(self) -> dict[str, VectorSpec]:
        return dict(self._specs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._client.close()
            except Exception as exc:  # noqa: BLE001 (closing is best effort; the lock dies with the process)
                logging.getLogger(__name__).warning(
                    "closing Qdrant client for %s failed: %s", self.location, exc
                )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- schema -----------------------------------------------------------------------------------------

    def ensure_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        m = self._models
        wanted = check_specs(vectors)
        indexes = check_payload_indexes(payload_indexes)
        if self._specs:
            check_compatible(self.collection, self._specs, wanted)
        else:
            distance = {"cosine": m.Distance.COSINE, "dot": m.Distance.DOT, "euclid": m.Distance.EUCLID}
            hnsw_m, ef_construct = self._hnsw
            self._call(
                "create collection",
                self._client.create_collection,
                self.collection,
                vectors_config={
                    s.name: m.VectorParams(size=s.dim, distance=distance[s.distance]) for s in wanted.values()
                },
                hnsw_config=m.HnswConfigDiff(m=hnsw_m, ef_construct=ef_construct),
            )
            self._specs = wanted
        if self._local:
            return  # local mode scans exactly; it ignores payload indexes (and warns about them)
        schema = {
            "keyword": lambda links: m.KeywordIndexParams(type=m.KeywordIndexType.KEYWORD, enable_hnsw=links),
            "integer": lambda links: m.IntegerIndexParams(type=m.IntegerIndexType.INTEGER, enable_hnsw=links),
            "float": lambda links: m.FloatIndexParams(type=m.FloatIndexType.FLOAT, enable_hnsw=links),
            "bool": lambda links: m.BoolIndexParams(type=m.BoolIndexType.BOOL, enable_hnsw=links),
            "text": lambda links: m.PayloadSchemaType.TEXT,
        }
        existing = self._payload_schema()
        for field_name, kind in indexes.items():
            if existing.get(field_name) != kind:
                self._call(
                    f"create payload index '{field_name}'",
                    self._client.create_payload_index,
                    self.collection,
                    field_name,
                    field_schema=schema[kind](payload_links(field_name, kind)),
                    wait=True,
                )

    def recreate_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        check_specs(vectors)
        if self._specs:
            self._call("delete collection", self._client.delete_collection, self.collection)
        self._specs, self._keys = {}, KeyHandles()
        self.ensure_collection(vectors, payload_indexes)

    def _payload_schema(self) -> dict[str, str]:
        info = self._call("read collection", self._client.get_collection, self.collection)
        out = {}
        for field_name, field_info in (info.payload_schema or {}).items():
            data_type = getattr(field_info, "data_type", None)
            out[field_name] = str(getattr(data_type, "value", data_type))
        return out

    # ---- writes -----------------------------------------------------------------------------------------

    def upsert(self, records: Sequence[Record]) -> None:
        specs = self._need_collection()
        m = self._models
        points = []
        for record in last_per_id(records):
            vectors = {
                name: vector_values(specs, name, v, what=f"record '{record.id}'")
                for name, v in record.vectors.items()
            }
            points.append(
                m.PointStruct(
                    id=point_uuid(record.id),
                    vector=vectors,
                    payload=stored_payload(record.id, record.payload),
                )
            )
        if points:
            self._call(
                f"upsert of {len(points)} records",
                self._client.upsert,
                self.collection,
                points=points,
                wait=True,
            )

    def delete(self, ids: Sequence[str]) -> None:
        self._need_collection()
        uids = list(dict.fromkeys(point_uuid(i) for i in ids))
        if uids:
            self._call(
                f"delete of {len(uids)} records",
                self._client.delete,
                self.collection,
                points_selector=self._models.PointIdsList(points=uids),
                wait=True,
            )

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        self._need_collection()
        m = self._models
        values = stored_payload("", payload, partial=True)
        uids = list(dict.fromkeys(point_uuid(i) for i in ids))
        if not uids or not values:
            return
        only_ids = m.Filter(must=[m.HasIdCondition(has_id=uids)])  # unknown ids simply match nothing
        self._call(
            "set_payload",
            self._client.set_payload,
            self.collection,
            payload=values,
            points=m.FilterSelector(filter=only_ids),
            wait=True,
        )

    def optimize(self) -> None:
        """A server indexes in the background and local mode scans exactly: nothing to do."""
        self._need_collection()

    def warm(self) -> None:
        """Nothing to build: id-only queries ask the server for the `pid` payload key."""

    # ---- reads ------------------------------------------------------------------------------------------

    def count(self) -> int:
        self._need_collection()
        return int(self._call("count", self._client.count, self.collection, exact=True).count)

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        self._need_collection()
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        found = self._call(
            "retrieve",
            self._client.retrieve,
            self.collection,
            ids=[point_uuid(i) for i in wanted],
            with_payload=True,
            with_vectors=with_vectors,
        )
        by_id: dict[str, Record] = {}
        for point in found:
            payload = dict(point.payload or {})
            pid = payload.pop(PID_KEY, None) or str(point.id)
            payload.pop(CATEGORY_PATHS_KEY, None)
            vectors = (
                {k: np.asarray(v, dtype=np.float32) for k, v in (point.vector or {}).items()}
                if with_vectors and isinstance(point.vector, dict)
                else {}
            )
            by_id[pid] = Record(pid, vectors, payload)
        return [by_id[i] for i in wanted if i in by_id]

    def _params(self, exact: bool):
        # local mode is always an exact scan and warns about index parameters it ignores
        return self._models.SearchParams(exact=True) if exact and not self._local else None

    def search(
        self, using: str, vector: np.ndarray, limit: int, flt: Filter | None = None, *, exact: bool = False
    ) -> list[Hit]:
        specs = self._need_collection()
        values = vector_values(specs, using, vector)
        limit = check_limit(limit)
        if limit == 0:
            return []
        response = self._call(
            "search",
            self._client.query_points,
            self.collection,
            query=values,
            using=using,
            limit=limit,
            query_filter=self._filter(flt),
            with_payload=True,
            search_params=self._params(exact),
        )
        return _hits(response.points)

    def fused_search(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> list[Hit]:
        return _hits(self._fused_points(prefetches, limit, flt, exact, rrf_k, with_payload=True))

    def fused_ids(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> list[str]:
        """Only the `pid` payload key travels back."""
        return [h.id for h in _hits(self._fused_points(prefetches, limit, flt, exact, rrf_k, with_payload=False))]

    def fused_keys(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> np.ndarray:
        """Keys are handed out by this client on first sight (the server's point ids are UUIDs)."""
        return self._keys.of(self.fused_ids(prefetches, limit, flt, exact=exact, rrf_k=rrf_k))

    def point_keys(self, ids: Sequence[str]) -> np.ndarray:
        return self._keys.of(ids)

    def _fused_points(self, prefetches: Sequence[Prefetch], limit: int, flt: Filter | None, exact: bool,
                      rrf_k: int, with_payload: bool) -> list:
        specs = self._need_collection()
        m = self._models
        if not prefetches:
            raise IndexStoreError("fused_search needs at least one prefetch")
        limit = check_limit(limit)
        params = self._params(exact)
        branches = [
            m.Prefetch(
                query=vector_values(specs, p.using, p.vector, finite=p.finite),
                using=p.using,
                limit=max(1, int(p.limit)),
                params=params,
            )
            for p in prefetches
        ]
        if limit == 0:
            return []
        weights = fusion_weights(prefetches)
        if int(rrf_k) < 1:
            raise IndexStoreError(f"rrf_k must be >= 1, got {rrf_k}")
        plain = all(w == 1.0 for w in weights)
        if plain and int(rrf_k) == RRF_K:
            fusion = m.FusionQuery(fusion=m.Fusion.RRF)  # Qdrant's default k is RRF_K
        else:
            fusion = m.RrfQuery(rrf=m.Rrf(k=int(rrf_k), weights=None if plain else weights))
        # query_filter is propagated into every prefetch by Qdrant.
        response = self._call(
            "fused_search",
            self._client.query_points,
            self.collection,
            prefetch=branches,
            query=fusion,
            limit=limit,
            query_filter=self._filter(flt),
            with_payload=True if with_payload else [PID_KEY],
        )
        return response.points

    # ---- filters ----------------------------------------------------------------------------------------

    def _filter(self, flt: Filter | None):
        if flt is None:
            return None
        m = self._models
        must: list = [self._match(key, value) for key, value in flt.must_match.items()]
        for key, (low, high) in flt.ranges.items():
            if low is not None or high is not None:
                low, high = check_range(key, low, high)
                must.append(m.FieldCondition(key=key, range=m.Range(gte=low, lte=high)))
        if flt.category_prefix:
            path = CATEGORY_SEPARATOR.join(flt.category_prefix)
            must.append(m.FieldCondition(key=CATEGORY_PATHS_KEY, match=m.MatchValue(value=path)))
        must_not = (
            [m.HasIdCondition(has_id=[point_uuid(i) for i in flt.must_not_ids])] if flt.must_not_ids else []
        )
        if not must and not must_not:
            return None
        return m.Filter(must=must or None, must_not=must_not or None)

    def _match(self, key: str, value: Any):
        m = self._models
        if isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            if all(isinstance(v, str) for v in values) or all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                return m.FieldCondition(key=key, match=m.MatchAny(any=values))
            return m.Filter(should=[self._match(key, v) for v in values])
        if isinstance(value, (bool, np.bool_)):
            return m.FieldCondition(key=key, match=m.MatchValue(value=bool(value)))
        if isinstance(value, (str, int, np.integer)):
            return m.FieldCondition(
                key=key, match=m.MatchValue(value=value if isinstance(value, str) else int(value))
            )
        if isinstance(value, (float, np.floating)):
            return m.FieldCondition(key=key, range=m.Range(gte=float(value), lte=float(value)))
        raise IndexStoreError(f"cannot filter '{key}' on a value of type {type(value).__name__}")


def _hits(points) -> list[Hit]:
    hits = []
    for point in points:
        payload = dict(point.payload or {})
        pid = payload.pop(PID_KEY, None) or str(point.id)
        payload.pop(CATEGORY_PATHS_KEY, None)
        hits.append(Hit(pid, float(point.score), payload))
    return hits
