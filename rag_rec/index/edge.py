"""Embedded backend: Qdrant's engine in-process through qdrant-edge (one EdgeShard per collection)."""

from __future__ import annotations

import json
import operator
import os
import shutil
import threading
import uuid
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
    check_compatible,
    check_limit,
    check_payload_indexes,
    check_range,
    check_specs,
    fusion_weights,
    last_per_id,
    payload_links,
    stored_payload,
    vector_values,
)

LAYOUT_FILE = "rag_rec_layout.json"
LAYOUT_FORMAT = 2  # 1: UUID5 point ids (migrated on open); 2: sequential integer point ids
_CREATING = ".creating-"
_REPLACED = ".replaced-"


def _is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


_POINT_ID = operator.attrgetter("id")


class _DirLock:
    """An exclusive advisory lock (flock) held while a store is open; the OS drops it if the process dies."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open while the store is)
        except OSError as exc:
            raise IndexStoreError(f"cannot open the lock file {path}: {exc}") from exc
        try:
            import fcntl
        except ImportError:  # not POSIX: the engine's own WAL lock still refuses a second writer
            return
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "unknown"
            self._fh.close()
            raise IndexStoreError(
                f"index at {path.parent} is locked by another process (pid {holder}, lock file {path}); "
                "close the other store or point this one at another path"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()

    def release(self) -> None:
        if not self._fh.closed:
            self._fh.close()  # closing the descriptor releases the flock


class EdgeStore:
    """A VectorStore on qdrant-edge, persisted under `path/collection`.

    Every write call is one engine operation (one WAL entry) followed by flush(), so a call is all-or-nothing
    and durable once it returns. HNSW indexes are built by optimize() (edge never optimizes on its own);
    until then searches are exact scans of the appendable segment. Segments whose vectors take less than
    full_scan_threshold_kb are always scanned exactly; indexing_threshold_kb (engine default when None) is the
    segment size from which optimize() builds HNSW. max_search_threads sizes the engine's search thread pool (None:
    the engine's default, derived from the CPUs: 8 threads on a 2-core machine); it applies to every open.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        collection: str = "products",
        hnsw_m: int = 16,
        hnsw_ef_construct: int = 100,
        max_search_threads: int | None = 1,
        full_scan_threshold_kb: int = 10_000,
        indexing_threshold_kb: int | None = None,
    ):
        self._qe = require("qdrant_edge", "index")
        self.root = Path(path)
        self.collection = collection
        self.shard_dir = self.root / collection
        self._hnsw = (hnsw_m, hnsw_ef_construct, full_scan_threshold_kb)
        self._indexing_threshold_kb = indexing_threshold_kb
        self._max_search_threads = max_search_threads
        self._write_lock = threading.RLock()
        self._shard: Any = None
        self._specs: dict[str, VectorSpec] = {}
        self._payload_indexes: dict[str, str] = {}
        self._closed = False
        self._ids: _PointIds | None = None  # product id <-> point id, scanned from the engine on first use
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexStoreError(f"cannot create index directory {self.root}: {exc}") from exc
        self._lock = _DirLock(self.root / f"{collection}.lock")
        try:
            self._remove_interrupted_creations()
            if self.shard_dir.exists():
                self._open_existing()
        except BaseException:
            self._lock.release()
            raise

    # ---- lifecycle -------------------------------------------------------------------------------------

    def _remove_interrupted_creations(self) -> None:
        replaced = sorted(self.root.glob(f".{self.collection}{_REPLACED}*"))
        if replaced and not self.shard_dir.exists():  # a migration died between its two renames
            os.rename(replaced[-1], self.shard_dir)
            _fsync_dir(self.root)
        for leftover in [*self.root.glob(f".{self.collection}{_CREATING}*"), *replaced]:
            if leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)

    def _open_existing(self) -> None:
        if not self.shard_dir.is_dir():
            raise IndexStoreError(f"index path {self.shard_dir} exists but is not a directory")
        if not any(self.shard_dir.iterdir()):
            self.shard_dir.rmdir()
            return
        layout_path = self.shard_dir / LAYOUT_FILE
        try:
            layout = json.loads(layout_path.read_text(encoding="utf-8"))
            if layout.get("format") not in (1, LAYOUT_FORMAT):
                raise ValueError(f"unsupported layout format {layout.get('format')!r}")
            specs = check_specs(
                [VectorSpec(v["name"], int(v["dim"]), v["distance"]) for v in layout["vectors"]]
            )
            payload_indexes = dict(layout["payload_indexes"])
        except (OSError, ValueError, KeyError, TypeError, IndexStoreError) as exc:
            raise IndexStoreError(
                f"index at {self.shard_dir} is corrupt or not a rag_rec index ({LAYOUT_FILE}: {exc}); "
                "move it away and rebuild the index"
            ) from exc
        self._specs, self._payload_indexes = specs, payload_indexes
        if layout["format"] == 1:
            self._migrate_uuid_points()
        self._shard = self._load()

    def _load(self):
        """The shard under shard_dir, open, with this store's search thread pool (the rest of its config as
        persisted)."""
        qe, config = self._qe, None
        if self._max_search_threads is not None:
            config = qe.EdgeConfig(vectors=self._vector_params(self._specs),
                                   max_search_threads=self._max_search_threads)
        return self._engine(lambda: qe.EdgeShard.load(str(self.shard_dir), config), "open")

    def _migrate_uuid_points(self) -> None:
        """Rewrite a format-1 index (UUID5 point ids) with integer point ids: copied into a scratch shard, then
        swapped in by two renames; a crash leaves the old index (restored on the next open) or the new one."""
        qe = self._qe
        old = self._engine(lambda: qe.EdgeShard.load(str(self.shard_dir)), "open")
        scratch = self.root / f".{self.collection}{_CREATING}{uuid.uuid4().hex[:8]}"
        try:
            new = self._build_empty(scratch, self._specs, self._payload_indexes)
            try:
                offset, key = None, 0
                while True:
                    request = qe.ScrollRequest(offset=offset, limit=1_000, with_payload=True, with_vector=True)
                    points, offset = self._engine(lambda request=request: old.scroll(request), "scroll")
                    moved = []
                    for point in points:
                        moved.append(qe.Point(key, dict(point.vector or {}), point.payload or {}))
                        key += 1
                    if moved:
                        self._engine(lambda moved=moved: new.update(qe.UpdateOperation.upsert_points(moved)), "migrate")
                    if offset is None:
                        break
                self._engine(new.optimize, "optimize")
                self._engine(new.flush, "flush")
            finally:
                new.close()
        except BaseException:
            old.close()
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        old.close()
        self._swap_in(scratch)

    def _swap_in(self, scratch: Path) -> None:
        """Replace the shard directory with `scratch` by two renames; a crash between them leaves the old shard
        under the replaced- name, which the next open restores (_remove_interrupted_creations)."""
        replaced = self.root / f".{self.collection}{_REPLACED}{uuid.uuid4().hex[:8]}"
        os.rename(self.shard_dir, replaced)
        os.rename(scratch, self.shard_dir)
        _fsync_dir(self.root)
        shutil.rmtree(replaced, ignore_errors=True)

    def _engine(self, call, action: str):
        try:
            return call()
        except BaseException as exc:
            if _is_fatal(exc):
                raise
            message = str(exc)
            if "WouldBlock" in message:
                raise IndexStoreError(
                    f"index at {self.shard_dir} is locked by another process or store; close it first"
                ) from exc
            raise IndexStoreError(f"{action} failed on index {self.shard_dir}: {message}") from exc

    def _open_shard(self):
        if self._shard is None:
            if self._closed:
                raise IndexStoreError(f"the store for {self.shard_dir} is closed")
            raise IndexStoreError(
                f"collection '{self.collection}' does not exist at {self.root}; call ensure_collection first"
            )
        return self._shard

    @property
    def engine(self):
        """The underlying qdrant_edge.EdgeShard (for benchmarks and engine-level tooling)."""
        return self._open_shard()

    @property
    def vectors(self) -> dict[str, VectorSpec]:
        return dict(self._specs)

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            shard, self._shard = self._shard, None
            try:
                if shard is not None:
                    self._engine(shard.flush, "flush")
                    self._engine(shard.close, "close")
            finally:
                self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- schema -----------------------------------------------------------------------------------------

    def _vector_params(self, specs: dict[str, VectorSpec]) -> dict:
        """The engine's named-vector config for `specs`."""
        return {s.name: self._qe.EdgeVectorParams(size=s.dim, distance=self._distance(s.distance))
                for s in specs.values()}

    def _distance(self, name: str):
        d = self._qe.Distance
        return {"cosine": d.Cosine, "dot": d.Dot, "euclid": d.Euclid}[name]

    def _schema(self, field_name: str, kind: str):
        qe, links = self._qe, payload_links(field_name, kind)
        params = {
            "keyword": lambda: qe.KeywordIndexParams(enable_hnsw=links),
            "integer": lambda: qe.IntegerIndexParams(enable_hnsw=links),
            "float": lambda: qe.FloatIndexParams(enable_hnsw=links),
            "bool": lambda: qe.BoolIndexParams(enable_hnsw=links),
            "text": lambda: qe.PayloadSchemaType.Text,
        }
        return params[kind]()

    def _layout(self, specs: dict[str, VectorSpec], indexes: dict[str, str]) -> dict:
        return {
            "format": LAYOUT_FORMAT,
            "collection": self.collection,
            "vectors": [{"name": s.name, "dim": s.dim, "distance": s.distance} for s in specs.values()],
            "payload_indexes": indexes,
        }

    def ensure_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        wanted = check_specs(vectors)
        indexes = check_payload_indexes(payload_indexes)
        with self._write_lock:
            if self._closed:
                raise IndexStoreError(f"the store for {self.shard_dir} is closed")
            if self._shard is None:
                self._create(wanted, indexes)
                return
            check_compatible(self.collection, self._specs, wanted)
            changed = {k: v for k, v in indexes.items() if self._payload_indexes.get(k) != v}
            for field_name, kind in changed.items():
                op = self._qe.UpdateOperation.create_field_index(field_name, self._schema(field_name, kind))
                self._engine(lambda op=op: self._shard.update(op), f"create payload index '{field_name}'")
            if changed:
                self._engine(self._shard.flush, "flush")
                self._payload_indexes = {**self._payload_indexes, **changed}
                _write_json_atomic(self.shard_dir / LAYOUT_FILE, self._layout(self._specs, self._payload_indexes))

    def recreate_collection(self, vectors: Sequence[VectorSpec], payload_indexes: dict[str, str]) -> None:
        """The new empty shard is built in a scratch directory, then swapped in by two renames (a crash between
        them restores the old shard on the next open)."""
        wanted = check_specs(vectors)
        indexes = check_payload_indexes(payload_indexes)
        with self._write_lock:
            if self._closed:
                raise IndexStoreError(f"the store for {self.shard_dir} is closed")
            if self._shard is None:
                self._create(wanted, indexes)
                return
            scratch = self.root / f".{self.collection}{_CREATING}{uuid.uuid4().hex[:8]}"
            try:
                self._build_empty(scratch, wanted, indexes).close()
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
            self._shard.close()
            self._shard, self._ids = None, None
            self._swap_in(scratch)
            self._specs, self._payload_indexes = wanted, indexes
            self._shard = self._load()

    def _create(self, specs: dict[str, VectorSpec], indexes: dict[str, str]) -> None:
        """Build the empty shard in a scratch directory, then rename it into place (whole or not at all)."""
        scratch = self.root / f".{self.collection}{_CREATING}{uuid.uuid4().hex[:8]}"
        try:
            self._build_empty(scratch, specs, indexes).close()
            self._specs, self._payload_indexes = specs, indexes
            self._ids = None
            os.rename(scratch, self.shard_dir)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            self._specs, self._payload_indexes = {}, {}
            raise
        self._shard = self._load()

    def _build_empty(self, scratch: Path, specs: dict[str, VectorSpec], indexes: dict[str, str]):
        """An empty shard with this store's vectors, HNSW settings, payload indexes and layout file, open."""
        qe = self._qe
        m, ef_construct, full_scan_threshold_kb = self._hnsw
        optimizers = (
            None
            if self._indexing_threshold_kb is None
            else qe.EdgeOptimizersConfig(indexing_threshold=self._indexing_threshold_kb)
        )
        config = qe.EdgeConfig(
            vectors=self._vector_params(specs),
            hnsw_config=qe.HnswIndexConfig(
                m=m, ef_construct=ef_construct, full_scan_threshold=full_scan_threshold_kb
            ),
            optimizers=optimizers,
            max_search_threads=self._max_search_threads,
        )
        shard = self._engine(lambda: qe.EdgeShard.create(str(scratch), config), "create")
        try:
            for field_name, kind in indexes.items():
                op = qe.UpdateOperation.create_field_index(field_name, self._schema(field_name, kind))
                self._engine(lambda op=op: shard.update(op), f"create payload index '{field_name}'")
            self._engine(shard.flush, "flush")
            _write_json_atomic(scratch / LAYOUT_FILE, self._layout(specs, indexes))
        except BaseException:
            shard.close()
            raise
        return shard

    # ---- writes -----------------------------------------------------------------------------------------

    def _apply(self, op, action: str) -> None:
        with self._write_lock:
            shard = self._open_shard()
            self._engine(lambda: shard.update(op), action)
            self._engine(shard.flush, "flush")

    def upsert(self, records: Sequence[Record]) -> None:
        self._open_shard()
        shard_specs, qe = self._specs, self._qe
        latest = last_per_id(records)
        prepared = [
            (record.id, {name: vector_values(shard_specs, name, v, what=f"record '{record.id}'")
                         for name, v in record.vectors.items()}, stored_payload(record.id, record.payload))
            for record in latest
        ]
        if not prepared:
            return
        with self._write_lock:
            keys = self._point_ids().assign([pid for pid, _, _ in prepared])
            points = [qe.Point(key, vectors, payload) for key, (_, vectors, payload) in zip(keys, prepared)]
            self._apply(qe.UpdateOperation.upsert_points(points), f"upsert of {len(points)} records")

    def delete(self, ids: Sequence[str]) -> None:
        with self._write_lock:
            self._open_shard()
            point_ids = self._point_ids()
            keys = point_ids.known(dict.fromkeys(ids))
            if keys:
                self._apply(self._qe.UpdateOperation.delete_points(keys), f"delete of {len(keys)} records")
                point_ids.forget(keys)

    def set_payload(self, ids: Sequence[str], payload: dict[str, Any]) -> None:
        values = stored_payload("", payload, partial=True)
        self._open_shard()
        keys = set(self._point_ids().known(ids))
        if not keys or not values:
            return
        qe = self._qe
        only_ids = qe.Filter(must=[qe.HasIdCondition(keys)])
        self._apply(qe.UpdateOperation.set_payload_by_filter(only_ids, values), "set_payload")

    def optimize(self) -> None:
        with self._write_lock:
            shard = self._open_shard()
            self._engine(shard.optimize, "optimize")
            self._engine(shard.flush, "flush")

    # ---- reads ------------------------------------------------------------------------------------------

    def count(self) -> int:
        shard = self._open_shard()
        return int(self._engine(lambda: shard.count(self._qe.CountRequest(exact=True)), "count"))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> list[Record]:
        shard = self._open_shard()
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return []
        keys = self._point_ids().known(wanted)
        if not keys:
            return []
        found = self._engine(
            lambda: shard.retrieve(keys, with_payload=True, with_vector=with_vectors), "retrieve"
        )
        by_id: dict[str, Record] = {}
        for point in found:
            payload = point.payload or {}
            pid = payload.pop(PID_KEY, None) or str(point.id)
            payload.pop(CATEGORY_PATHS_KEY, None)
            vectors = (
                {k: np.asarray(v, dtype=np.float32) for k, v in (point.vector or {}).items()}
                if with_vectors
                else {}
            )
            by_id[pid] = Record(pid, vectors, payload)
        return [by_id[i] for i in wanted if i in by_id]

    def search(
        self, using: str, vector: np.ndarray, limit: int, flt: Filter | None = None, *, exact: bool = False
    ) -> list[Hit]:
        shard = self._open_shard()
        values = vector_values(self._specs, using, vector)
        limit = check_limit(limit)
        if limit == 0:
            return []
        qe = self._qe
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(values, using=using),
            filter=self._filter(flt),
            with_payload=True,
            params=qe.SearchParams(exact=True) if exact else None,
        )
        return _hits(self._engine(lambda: shard.query(request), "search"))

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
        """Product ids come from the in-memory point-id map (reading `pid` payloads costs ~0.3 ms per 100 hits;
        integer point ids make the map a list)."""
        points = self._fused_points(prefetches, limit, flt, exact, rrf_k, with_payload=False)
        names = self._point_ids().name  # the scan that builds it refuses points this store did not write
        return [names[p.id] for p in points]

    def fused_keys(
        self,
        prefetches: Sequence[Prefetch],
        limit: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        rrf_k: int = RRF_K,
    ) -> np.ndarray:
        """The hits' point ids themselves (integers this store hands out in order)."""
        points = self._fused_points(prefetches, limit, flt, exact, rrf_k, with_payload=False)
        return np.fromiter(map(_POINT_ID, points), dtype=np.int64, count=len(points))  # ~3 us less than a generator

    def point_keys(self, ids: Sequence[str]) -> np.ndarray:
        key = self._point_ids().key
        return np.fromiter((key.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def _fused_points(self, prefetches: Sequence[Prefetch], limit: int, flt: Filter | None, exact: bool,
                      rrf_k: int, with_payload: bool) -> list:
        shard = self._open_shard()
        if not prefetches:
            raise IndexStoreError("fused_search needs at least one prefetch")
        limit = check_limit(limit)
        qe = self._qe
        params = qe.SearchParams(exact=True) if exact else None
        branches = [
            qe.Prefetch(
                limit=max(1, int(p.limit)),
                params=params,
                query=qe.Query.Nearest(vector_values(self._specs, p.using, p.vector, finite=p.finite), using=p.using),
            )
            for p in prefetches
        ]
        if limit == 0:
            return []
        weights = fusion_weights(prefetches)
        if int(rrf_k) < 1:
            raise IndexStoreError(f"rrf_k must be >= 1, got {rrf_k}")
        fusion = qe.Fusion.Rrf(k=int(rrf_k), weights=None if all(w == 1.0 for w in weights) else weights)
        # The top-level filter is propagated into every prefetch by the engine.
        request = qe.QueryRequest(
            limit=limit, prefetches=branches, query=fusion, filter=self._filter(flt), with_payload=with_payload
        )
        return self._engine(lambda: shard.query(request), "fused_search")

    # ---- point ids --------------------------------------------------------------------------------------

    def warm(self) -> None:
        """Build the point-id map now (~0.7 s per 92k points) instead of on the first query or write."""
        self._point_ids()

    def _point_ids(self) -> _PointIds:
        ids = self._ids
        if ids is None:
            with self._write_lock:
                if self._ids is None:
                    self._ids = self._scan_point_ids()
                ids = self._ids
        return ids

    def _scan_point_ids(self) -> _PointIds:
        shard, qe = self._open_shard(), self._qe
        names: dict[int, str] = {}
        offset = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=10_000, with_payload=[PID_KEY], with_vector=False)
            points, offset = self._engine(lambda request=request: shard.scroll(request), "scroll")
            for point in points:
                if not isinstance(point.id, int):
                    raise IndexStoreError(
                        f"index at {self.shard_dir} holds a point with a non-integer id ({point.id}); "
                        "it was not written by this rag_rec version: rebuild the index"
                    )
                names[point.id] = _pid_of(point)
            if offset is None:
                return _PointIds(names)

    # ---- filters ----------------------------------------------------------------------------------------

    def _filter(self, flt: Filter | None):
        if flt is None:
            return None
        qe = self._qe
        must: list = [self._match(key, value) for key, value in flt.must_match.items()]
        for key, (low, high) in flt.ranges.items():
            if low is not None or high is not None:
                low, high = check_range(key, low, high)
                must.append(qe.FieldCondition(key, range=qe.RangeFloat(gte=low, lte=high)))
        if flt.category_prefix:
            path = CATEGORY_SEPARATOR.join(flt.category_prefix)
            must.append(qe.FieldCondition(CATEGORY_PATHS_KEY, match=qe.MatchValue(path)))
        excluded = set(self._point_ids().known(flt.must_not_ids)) if flt.must_not_ids else set()
        must_not = [qe.HasIdCondition(excluded)] if excluded else []
        if not must and not must_not:
            return None
        return qe.Filter(must=must or None, must_not=must_not or None)

    def _match(self, key: str, value: Any):
        qe = self._qe
        if isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            if all(isinstance(v, str) for v in values) or all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                return qe.FieldCondition(key, match=qe.MatchAny(values))
            return qe.Filter(should=[self._match(key, v) for v in values])
        if isinstance(value, (bool, np.bool_)):
            # qdrant-edge 0.9 reads a Python bool as the integer 0/1; numpy.bool_ arrives as a bool.
            return qe.FieldCondition(key, match=qe.MatchValue(np.bool_(value)))
        if isinstance(value, (str, int, np.integer)):
            return qe.FieldCondition(
                key, match=qe.MatchValue(value if isinstance(value, str) else int(value))
            )
        if isinstance(value, (float, np.floating)):
            return qe.FieldCondition(key, range=qe.RangeFloat(gte=float(value), lte=float(value)))
        raise IndexStoreError(f"cannot filter '{key}' on a value of type {type(value).__name__}")


class _PointIds:
    """Product id <-> integer point id. Ids are handed out in order by the one process holding the store's lock;
    the engine's `pid` payloads are the truth, so the map is rebuilt by a scroll when a store opens."""

    def __init__(self, names: dict[int, str]):
        self.name: list[str | None] = [None] * (max(names, default=-1) + 1)
        for key, pid in names.items():
            self.name[key] = pid
        self.key: dict[str, int] = {pid: key for key, pid in names.items()}

    def known(self, pids) -> list[int]:
        key = self.key
        return [key[p] for p in pids if p in key]

    def assign(self, pids: Sequence[str]) -> list[int]:
        """The point id of each product, new ones appended (call under the store's write lock)."""
        out = []
        for pid in pids:
            key = self.key.get(pid)
            if key is None:
                key = len(self.name)
                self.name.append(pid)
                self.key[pid] = key
            out.append(key)
        return out

    def forget(self, keys: Sequence[int]) -> None:
        for key in keys:
            pid = self.name[key]
            self.name[key] = None
            if pid is not None and self.key.get(pid) == key:
                del self.key[pid]


def _pid_of(point) -> str:
    """The product id a point stores in its payload (the point id itself for foreign points)."""
    return (point.payload or {}).get(PID_KEY) or str(point.id)


def _hits(points) -> list[Hit]:
    hits = []
    for point in points:
        payload = point.payload or {}
        pid = payload.pop(PID_KEY, None) or str(point.id)
        payload.pop(CATEGORY_PATHS_KEY, None)
        hits.append(Hit(pid, point.score, payload))
    return hits
