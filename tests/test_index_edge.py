"""EdgeStore specifics: kill -9 mid-upsert, locking across processes, corrupt directories, HNSW."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rag_rec.errors import IndexStoreError
from rag_rec.index import PRODUCT_PAYLOAD_INDEXES, Filter, Record, VectorSpec, open_store
from rag_rec.index.base import Prefetch
from rag_rec.index.edge import LAYOUT_FILE, EdgeStore
from rag_rec.settings import IndexSettings

SPECS = [VectorSpec("text", 16), VectorSpec("cf", 4, "dot")]


def _records(n: int, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    return [
        Record(
            f"E{i}",
            {"text": rng.standard_normal(16), "cf": rng.standard_normal(4)},
            {"brand": "Acme", "price": float(i), "in_stock": True, "category": ["A", "B"]},
        )
        for i in range(n)
    ]


def _filled_store(tmp_path, n: int = 50) -> None:
    with EdgeStore(tmp_path / "idx") as store:
        store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
        store.upsert(_records(n))


def _child(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


CRASH_CHILD = """
    import sys
    import numpy as np
    from rag_rec.index import Record, VectorSpec
    from rag_rec.index.edge import EdgeStore

    path, progress, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = EdgeStore(path)
    store.ensure_collection([VectorSpec("text", 128), VectorSpec("cf", 32, "dot")], {"brand": "keyword"})
    rng = np.random.default_rng(0)
    with open(progress, "a") as log:
        for b in range(10_000):
            text = rng.standard_normal((batch, 128), dtype=np.float32)
            cf = rng.standard_normal((batch, 32), dtype=np.float32)
            records = [Record(f"P{b}-{i}", {"text": text[i], "cf": cf[i]}, {"batch": b, "i": i, "brand": "x"})
                       for i in range(batch)]
            log.write(f"start {b}\\n"); log.flush()
            store.upsert(records)
            log.write(f"done {b}\\n"); log.flush()
"""


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child made no progress in time")
        time.sleep(0.02)


@pytest.mark.parametrize("kill_after_batches", [3, 6])
def test_kill_9_mid_upsert_keeps_every_returned_call(tmp_path, kill_after_batches):
    batch = 3000
    path, progress = tmp_path / "idx", tmp_path / "progress.log"
    progress.touch()
    proc = _child(CRASH_CHILD, str(path), str(progress), str(batch))

    # kill while the next upsert call is running: its 'start' is logged, its 'done' is not
    _wait_for(lambda: progress.read_text().count("start") > kill_after_batches, 120, proc)
    time.sleep(0.03)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    log = progress.read_text().splitlines()
    done = sum(1 for line in log if line.startswith("done"))
    started = sum(1 for line in log if line.startswith("start"))
    assert started in (done, done + 1)

    with EdgeStore(path) as store:  # opens cleanly: no lock left behind, no half-written batch
        count = store.count()
        assert count % batch == 0, f"a batch was half applied: {count} points"
        # the killed call may have returned just before the kill landed, before it could log 'done'
        assert count in (done * batch, started * batch), (count, done, started)
        last_done = done - 1
        ids = [f"P{last_done}-{i}" for i in range(0, batch, 97)]
        got = store.retrieve(ids, with_vectors=True)
        assert [r.id for r in got] == ids
        assert all(r.payload["batch"] == last_done and r.vectors["text"].shape == (128,) for r in got)
        hits = store.search("text", got[0].vectors["text"], 1, Filter(must_match={"brand": "x"}), exact=True)
        assert hits[0].id == got[0].id
        store.upsert([Record("after-crash", {"cf": np.ones(32)}, {})])
        assert store.count() == count + 1


LOCK_CHILD = """
    import sys, time
    from rag_rec.index import VectorSpec
    from rag_rec.index.edge import EdgeStore

    store = EdgeStore(sys.argv[1])
    store.ensure_collection([VectorSpec("text", 16)], {})
    print("ready", flush=True)
    time.sleep(120)
"""


def test_directory_locked_by_another_process_is_refused(tmp_path):
    _filled_store(tmp_path)
    proc = _child(LOCK_CHILD, str(tmp_path / "idx"))
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        with pytest.raises(IndexStoreError, match=rf"locked by another process \(pid {proc.pid}"):
            EdgeStore(tmp_path / "idx")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    with EdgeStore(tmp_path / "idx") as store:  # the dead process's lock is gone
        assert store.count() == 50


def _corrupt_layout(shard):
    (shard / LAYOUT_FILE).write_text("{not json")


def _missing_layout(shard):
    (shard / LAYOUT_FILE).unlink()


def _corrupt_engine_config(shard):
    (shard / "edge_config.json").write_text("{garbage")


def _corrupt_wal(shard):
    for f in (shard / "wal").iterdir():
        with open(f, "r+b") as fh:
            fh.write(os.urandom(4096))


def _corrupt_segments(shard):
    for f in (shard / "segments").rglob("*"):
        if f.is_file() and f.stat().st_size:
            with open(f, "r+b") as fh:
                fh.write(os.urandom(min(64, f.stat().st_size)))


@pytest.mark.parametrize(
    "damage", [_corrupt_layout, _missing_layout, _corrupt_engine_config, _corrupt_wal, _corrupt_segments]
)
def test_corrupt_directory_gives_a_clear_error(tmp_path, damage):
    _filled_store(tmp_path)
    shard = tmp_path / "idx" / "products"
    damage(shard)
    with pytest.raises(IndexStoreError, match=str(shard)):
        EdgeStore(tmp_path / "idx")
    assert shard.is_dir(), "a damaged index must be left for inspection, never deleted"
    # the failed open released its lock: fixing the directory makes it usable again
    (tmp_path / "idx" / "products").rename(tmp_path / "idx" / "damaged")
    with EdgeStore(tmp_path / "idx") as store:
        store.ensure_collection(SPECS, {})
        assert store.count() == 0


def test_paths_that_are_files_give_a_clear_error(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(IndexStoreError, match="afile"):
        EdgeStore(tmp_path / "afile")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "products").write_text("x")
    with pytest.raises(IndexStoreError, match="not a directory"):
        EdgeStore(tmp_path / "root")


def test_interrupted_creation_leaves_no_index(tmp_path):
    root = tmp_path / "idx"
    (root / ".products.creating-deadbeef" / "segments").mkdir(parents=True)
    with EdgeStore(root) as store:
        assert not (root / ".products.creating-deadbeef").exists()
        with pytest.raises(IndexStoreError, match="ensure_collection"):
            store.count()
        store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
        assert store.count() == 0
    layout = json.loads((root / "products" / LAYOUT_FILE).read_text())
    assert [v["name"] for v in layout["vectors"]] == ["text", "cf"]
    assert layout["payload_indexes"]["category_paths"] == "keyword"


def test_payload_indexes_added_later_are_persisted(tmp_path):
    with EdgeStore(tmp_path) as store:
        store.ensure_collection(SPECS, {"brand": "keyword"})
        store.ensure_collection(SPECS, {"price": "float"})
        assert {"brand", "price", "category_paths"} <= set(store.engine.info().payload_schema)
    with EdgeStore(tmp_path) as store:
        layout = json.loads((tmp_path / "products" / LAYOUT_FILE).read_text())
        assert layout["payload_indexes"] == {
            "brand": "keyword",
            "price": "float",
            "category_paths": "keyword",
        }
    with pytest.raises(IndexStoreError, match="type must be one of"):
        EdgeStore(tmp_path / "other").ensure_collection(SPECS, {"price": "decimal"})


def test_hnsw_after_optimize_agrees_with_exact_search(tmp_path):
    rng = np.random.default_rng(11)
    dim, n = 32, 4000
    # tiny thresholds so this small collection gets a real HNSW graph
    with EdgeStore(tmp_path, full_scan_threshold_kb=1, indexing_threshold_kb=1) as store:
        store.ensure_collection([VectorSpec("text", dim)], PRODUCT_PAYLOAD_INDEXES)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        store.upsert([Record(f"H{i}", {"text": vectors[i]}, {"in_stock": bool(i % 2)}) for i in range(n)])
        store.optimize()
        assert store.engine.info().indexed_vectors_count >= n
        recall = []
        for q in rng.standard_normal((20, dim)):
            exact = [h.id for h in store.search("text", q, 10, exact=True)]
            approx = [h.id for h in store.search("text", q, 10)]
            recall.append(len(set(exact) & set(approx)) / 10)
            in_stock = store.search("text", q, 10, Filter(must_match={"in_stock": True}))
            assert len(in_stock) == 10 and all(int(h.id[1:]) % 2 for h in in_stock)
        assert np.mean(recall) >= 0.9
        store.upsert([Record("late", {"text": np.ones(dim)}, {})])  # appendable segment after optimize
        assert store.search("text", np.ones(dim), 1)[0].id == "late"


def test_payload_aware_hnsw_links_only_on_keyword_filters(tmp_path):
    with EdgeStore(tmp_path) as store:
        store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
        schema = store.engine.info().payload_schema
        links = {name: info.params.enable_hnsw for name, info in schema.items()}
    assert links == {
        "category": True, "brand": True, "price": False, "in_stock": False, "category_paths": False,
    }


def _as_format_1(root) -> None:
    """Rewrite the index under root/products as an index written by a format-1 rag_rec (UUID5 point ids)."""
    import shutil

    import qdrant_edge as qe

    from rag_rec.index.common import point_uuid

    shard_dir = root / "products"
    layout = json.loads((shard_dir / LAYOUT_FILE).read_text())
    source = qe.EdgeShard.load(str(shard_dir))
    points, _ = source.scroll(qe.ScrollRequest(limit=10_000, with_payload=True, with_vector=True))
    source.close()
    old_dir = root / "v1"
    config = qe.EdgeConfig(vectors={
        "text": qe.EdgeVectorParams(size=16, distance=qe.Distance.Cosine),
        "cf": qe.EdgeVectorParams(size=4, distance=qe.Distance.Dot),
    })
    shard = qe.EdgeShard.create(str(old_dir), config)
    shard.update(qe.UpdateOperation.upsert_points(
        [qe.Point(point_uuid(p.payload["pid"]), dict(p.vector), p.payload) for p in points]))
    shard.flush()
    shard.close()
    (old_dir / LAYOUT_FILE).write_text(json.dumps({**layout, "format": 1}))
    shutil.rmtree(shard_dir)
    old_dir.rename(shard_dir)


def test_a_format_1_index_is_migrated_to_integer_point_ids_on_open(tmp_path):
    root = tmp_path / "idx"
    records = _records(40)
    with EdgeStore(root) as store:
        store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
        store.upsert(records)
        before = store.search("text", records[3].vectors["text"], 10, exact=True)
    _as_format_1(root)
    with EdgeStore(root) as store:
        assert json.loads((root / "products" / LAYOUT_FILE).read_text())["format"] == 2
        assert store.count() == 40
        assert [h.id for h in store.search("text", records[3].vectors["text"], 10, exact=True)] == \
            [h.id for h in before]
        got = store.retrieve(["E7", "E0", "missing"], with_vectors=True)
        assert [r.id for r in got] == ["E7", "E0"]
        assert got[0].payload["price"] == 7.0
        np.testing.assert_allclose(got[1].vectors["cf"], records[0].vectors["cf"], rtol=1e-6)
        store.upsert(_records(45)[40:])
        store.delete(["E1"])
        assert store.count() == 44
    assert sorted(p.name for p in root.iterdir()) == ["products", "products.lock"]


def test_a_migration_killed_between_its_renames_is_rolled_back_and_redone(tmp_path):
    root = tmp_path / "idx"
    _filled_store(tmp_path, 30)
    _as_format_1(root)
    (root / "products").rename(root / ".products.replaced-0000abcd")
    (root / ".products.creating-0000abcd").mkdir()
    with EdgeStore(root) as store:
        assert store.count() == 30
        assert {r.id for r in store.retrieve([f"E{i}" for i in range(30)])} == {f"E{i}" for i in range(30)}
    assert sorted(p.name for p in root.iterdir()) == ["products", "products.lock"]


def test_point_ids_are_integers_kept_across_reopen_and_never_reused_while_open(tmp_path):
    root = tmp_path / "idx"
    with EdgeStore(root) as store:
        store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
        store.upsert(_records(5))
        store.upsert(_records(5))  # idempotent: same ids, same points
        store.delete(["E4"])
        store.upsert([Record("N1", _records(1)[0].vectors, {"in_stock": True})])
        points, _ = store.engine.scroll(store._qe.ScrollRequest(limit=100, with_payload=True))
        assert {p.id: p.payload["pid"] for p in points} == {0: "E0", 1: "E1", 2: "E2", 3: "E3", 5: "N1"}
        query = _records(1)[0].vectors["text"]
        assert set(store.fused_ids([Prefetch("text", query, 10)], 10)) == {"E0", "E1", "E2", "E3", "N1"}
    with EdgeStore(root) as store:
        store.upsert(_records(3))
        assert store.count() == 5
        hits = store.fused_ids([Prefetch("text", query, 10)], 10, Filter(must_not_ids=("E0", "unknown")))
        assert set(hits) == {"E1", "E2", "E3", "N1"}


def _edge_search_threads() -> int:
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().startswith("edge-search")
        except OSError:  # a thread that ended while listed
            pass
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_the_search_pool_has_the_configured_threads_on_create_and_on_every_open(tmp_path):
    before = _edge_search_threads()
    for threads, expected in ((1, 1), (3, 3)):
        with EdgeStore(tmp_path / "idx", max_search_threads=threads) as store:
            store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
            store.upsert(_records(20))
            keys = store.fused_keys([Prefetch("text", np.ones(16), 5)], 5)
            assert len(keys) == 5
            assert _edge_search_threads() - before == expected, threads
        deadline = time.monotonic() + 5  # closing the store ends its pool (the threads exit on their own)
        while _edge_search_threads() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _edge_search_threads() == before
    with open_store(IndexSettings(path=tmp_path / "idx", search_threads=2)) as store:  # the setting's way in
        store.fused_keys([Prefetch("text", np.ones(16), 5)], 5)
        assert _edge_search_threads() - before == 2
