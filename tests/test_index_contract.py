"""The VectorStore contract on every backend: qdrant-edge on disk, qdrant-client in memory and on disk."""

from __future__ import annotations

import numpy as np
import pytest

from rag_rec.errors import IndexStoreError
from rag_rec.index import (
    PRODUCT_PAYLOAD_INDEXES,
    Filter,
    Prefetch,
    Record,
    VectorSpec,
    VectorStore,
    open_store,
)
from rag_rec.index.base import RRF_K
from rag_rec.index.common import fusion_weights
from rag_rec.settings import IndexSettings

TEXT_DIM, CF_DIM = 24, 8
SPECS = [VectorSpec("text", TEXT_DIM, "cosine"), VectorSpec("cf", CF_DIM, "dot")]
BACKENDS = ["edge", "qdrant-memory", "qdrant-path"]
PERSISTENT = {"edge", "qdrant-path"}
CATEGORIES = [
    ("Electronics", "Camera", "Lenses"),
    ("Electronics", "Camera", "Tripods"),
    ("Electronics", "Audio"),
    ("Clothing", "Shoes"),
    ("Camera",),
]
BRANDS = ["Acme", "Bolt", "Cirrus"]


def _settings(backend: str, tmp_path) -> IndexSettings:
    if backend == "edge":
        return IndexSettings(backend="edge", path=tmp_path / "edge", collection="products")
    if backend == "qdrant-memory":
        return IndexSettings(backend="qdrant", url=":memory:", collection="products")
    return IndexSettings(backend="qdrant", path=tmp_path / "qdrant", collection="products")


def make_records(n: int, seed: int = 0, prefix: str = "B") -> list[Record]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        records.append(
            Record(
                id=f"{prefix}{i:05d}",
                vectors={
                    "text": rng.standard_normal(TEXT_DIM).astype(np.float32),
                    "cf": rng.standard_normal(CF_DIM).astype(np.float32),
                },
                payload={
                    "title": f"product {i}",
                    "category": list(CATEGORIES[i % len(CATEGORIES)]),
                    "brand": BRANDS[i % len(BRANDS)],
                    "price": round(float(rng.uniform(1, 200)), 2),
                    "in_stock": bool(i % 4 != 0),
                },
            )
        )
    return records


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def open_backend(backend, tmp_path):
    opened = []

    def _open():
        store = open_store(_settings(backend, tmp_path))
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_backend):
    s = open_backend()
    s.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
    return s


@pytest.fixture
def filled(store):
    """A fresh store with records, for tests that change it."""
    records = make_records(120)
    store.upsert(records)
    return store, records


@pytest.fixture(scope="module")
def shared(backend, tmp_path_factory):
    """One filled store per backend for the read-only tests."""
    s = open_store(_settings(backend, tmp_path_factory.mktemp(f"shared-{backend}")))
    s.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
    records = make_records(120)
    s.upsert(records)
    yield s, records
    s.close()


# ---- expected results, computed with numpy over the same records ----------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _score(name: str, record: Record, query: np.ndarray) -> float:
    v = record.vectors[name]
    return float(_unit(v) @ _unit(query)) if name == "text" else float(v @ query)


def _matches(record: Record, flt: Filter | None) -> bool:
    if flt is None:
        return True
    p = record.payload
    for key, want in flt.must_match.items():
        have = p.get(key)
        haves = have if isinstance(have, list) else [have]
        wants = list(want) if isinstance(want, (list, tuple, set)) else [want]
        if not any(h == w and type(h) is type(w) for h in haves for w in wants):
            return False
    for key, (lo, hi) in flt.ranges.items():
        v = p.get(key)
        if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
            return False
    if flt.category_prefix and tuple(p["category"][: len(flt.category_prefix)]) != flt.category_prefix:
        return False
    return record.id not in flt.must_not_ids


def expected_top(records, name, query, k, flt=None) -> list[str]:
    scored = [(_score(name, r, query), r.id) for r in records if _matches(r, flt) and name in r.vectors]
    return [rid for _, rid in sorted(scored, key=lambda t: -t[0])[:k]]


def expected_rrf(records, prefetches, flt=None, k: int = RRF_K, tie_break: bool = True) -> dict[str, float]:
    """Qdrant's weighted RRF, with the stores' tie-break weights (index.common.fusion_weights) or without."""
    scores: dict[str, float] = {}
    weights = fusion_weights(prefetches) if tie_break else [p.weight for p in prefetches]
    for p, weight in zip(prefetches, weights):
        for pos, rid in enumerate(expected_top(records, p.using, p.vector, p.limit, flt)):
            scores[rid] = scores.get(rid, 0.0) + 1.0 / ((pos + 1.0) / weight + k - 1.0)
    return scores


# ---- contract ---------------------------------------------------------------------------------------------


def test_factory_builds_a_vector_store(store, backend):
    assert isinstance(store, VectorStore)
    assert type(store).__name__ == ("EdgeStore" if backend == "edge" else "QdrantStore")
    assert store.count() == 0


def test_operations_before_ensure_collection_fail_clearly(open_backend):
    s = open_backend()
    with pytest.raises(IndexStoreError, match="ensure_collection"):
        s.count()
    with pytest.raises(IndexStoreError, match="ensure_collection"):
        s.upsert(make_records(1))


def test_ensure_collection_is_idempotent_and_rejects_other_dims(store):
    store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
    store.ensure_collection([VectorSpec("text", TEXT_DIM)], {"brand": "keyword"})  # subset is fine
    with pytest.raises(IndexStoreError, match=rf"'text'.*{TEXT_DIM}.*{TEXT_DIM * 2}"):
        store.ensure_collection([VectorSpec("text", TEXT_DIM * 2), VectorSpec("cf", CF_DIM, "dot")], {})
    with pytest.raises(IndexStoreError, match="'cf'"):
        store.ensure_collection([VectorSpec("cf", CF_DIM, "cosine")], {})
    with pytest.raises(IndexStoreError, match="'behaviour'"):
        store.ensure_collection([VectorSpec("behaviour", 16)], {})


def test_recreate_collection_replaces_the_layout_and_empties_it(filled, open_backend):
    from rag_rec.errors import IncompatibleIndexError

    store, _ = filled
    wider = [VectorSpec("text", TEXT_DIM * 2), VectorSpec("cf", CF_DIM, "dot")]
    with pytest.raises(IncompatibleIndexError):
        store.ensure_collection(wider, PRODUCT_PAYLOAD_INDEXES)
    store.recreate_collection(wider, PRODUCT_PAYLOAD_INDEXES)
    assert store.count() == 0
    store.ensure_collection(wider, PRODUCT_PAYLOAD_INDEXES)  # the new layout is the collection's now
    rec = Record("W1", {"text": np.ones(TEXT_DIM * 2, dtype=np.float32), "cf": np.ones(CF_DIM, dtype=np.float32)},
                 {"title": "wide"})
    store.upsert([rec])
    assert [h.id for h in store.search("text", np.ones(TEXT_DIM * 2, dtype=np.float32), 1)] == ["W1"]


def test_upsert_is_idempotent_and_replaces(filled):
    store, records = filled
    store.upsert(records[:30])
    assert store.count() == len(records)
    changed = Record(
        records[3].id,
        {"text": -records[3].vectors["text"], "cf": records[3].vectors["cf"]},
        {**records[3].payload, "price": 1234.5, "title": "renamed"},
    )
    store.upsert([changed])
    assert store.count() == len(records)
    got = store.retrieve([changed.id], with_vectors=True)[0]
    assert got.payload == changed.payload
    np.testing.assert_allclose(got.vectors["text"], _unit(changed.vectors["text"]), atol=1e-5)
    top = store.search("text", changed.vectors["text"], 1, exact=True)
    assert top[0].id == changed.id


def test_duplicate_ids_in_one_call_keep_the_last(store):
    first, second = make_records(1, seed=1)[0], make_records(1, seed=2)[0]
    store.upsert([first, second])
    assert store.count() == 1
    assert store.retrieve([first.id])[0].payload == second.payload


def test_incremental_upserts_add_up(store):
    a, b = make_records(50, prefix="A"), make_records(40, seed=9, prefix="Z")
    store.upsert(a)
    assert store.count() == 50
    store.upsert(b)
    assert store.count() == 90
    assert store.search("text", b[7].vectors["text"], 1, exact=True)[0].id == b[7].id
    store.upsert([])
    assert store.count() == 90


def test_retrieve_skips_unknown_ids_and_keeps_order(shared):
    store, records = shared
    got = store.retrieve([records[5].id, "missing-1", records[2].id, records[5].id])
    assert [r.id for r in got] == [records[5].id, records[2].id]
    assert got[0].payload == records[5].payload and got[0].vectors == {}
    assert store.retrieve(["missing-1", "missing-2"]) == []
    with_vectors = store.retrieve([records[2].id], with_vectors=True)[0]
    np.testing.assert_allclose(with_vectors.vectors["cf"], records[2].vectors["cf"], atol=1e-6)
    np.testing.assert_allclose(with_vectors.vectors["text"], _unit(records[2].vectors["text"]), atol=1e-5)


def test_records_may_omit_a_vector(store):
    only_text = Record("T1", {"text": np.ones(TEXT_DIM, np.float32)}, {"title": "t"})
    store.upsert([only_text] + make_records(10))
    assert store.retrieve(["T1"], with_vectors=True)[0].vectors.keys() == {"text"}
    assert "T1" not in {h.id for h in store.search("cf", np.ones(CF_DIM), 20, exact=True)}
    assert store.search("text", np.ones(TEXT_DIM), 1, exact=True)[0].id == "T1"


@pytest.mark.parametrize("name", ["text", "cf"])
def test_exact_search_matches_brute_force(shared, name):
    store, records = shared
    rng = np.random.default_rng(42)
    for _ in range(5):
        q = rng.standard_normal(TEXT_DIM if name == "text" else CF_DIM)
        hits = store.search(name, q, 10, exact=True)
        assert [h.id for h in hits] == expected_top(records, name, q, 10)
        by_id = {r.id: r for r in records}
        for h in hits:
            assert h.score == pytest.approx(_score(name, by_id[h.id], q), abs=1e-4)
            assert h.payload == by_id[h.id].payload


FILTERS = [
    Filter(must_match={"brand": "Acme"}),
    Filter(must_match={"brand": ["Bolt", "Cirrus"]}),
    Filter(must_match={"in_stock": True}),
    Filter(must_match={"in_stock": False}),
    Filter(must_match={"category": "Camera"}),  # contains: matches 'Camera' anywhere in the path
    Filter(category_prefix=("Camera",)),  # starts with: only the top-level 'Camera' path
    Filter(category_prefix=("Electronics", "Camera")),
    Filter(ranges={"price": (50.0, 120.0)}),
    Filter(ranges={"price": (None, 40.0)}),
    Filter(ranges={"price": (150.0, None)}),
    Filter(must_not_ids=("B00000", "B00001", "B00002", "B00003")),
    Filter(
        must_match={"in_stock": True, "brand": "Cirrus"},
        ranges={"price": (20.0, 180.0)},
        category_prefix=("Electronics",),
        must_not_ids=("B00005",),
    ),
]


@pytest.mark.parametrize("flt", FILTERS, ids=[f"filter{i}" for i in range(len(FILTERS))])
def test_filtered_search_matches_brute_force(shared, flt):
    store, records = shared
    q = np.random.default_rng(7).standard_normal(TEXT_DIM)
    want = expected_top(records, "text", q, 15, flt)
    assert want, "the filter should match something in the fixture"
    assert [h.id for h in store.search("text", q, 15, flt, exact=True)] == want
    assert [h.id for h in store.search("text", q, 15, flt)] == want  # small data: the engine scans exactly


def test_filters_matching_nothing_return_empty(shared):
    store, _ = shared
    q = np.ones(TEXT_DIM)
    assert store.search("text", q, 5, Filter(must_match={"brand": "NoSuchBrand"})) == []
    assert store.search("text", q, 5, Filter(must_match={"brand": []})) == []
    assert store.search("text", q, 5, Filter(ranges={"price": (500.0, 600.0)})) == []
    assert store.search("text", q, 5, Filter(category_prefix=("Electronics", "Shoes"))) == []
    assert (
        store.fused_search(
            [Prefetch("text", q), Prefetch("cf", np.ones(CF_DIM))],
            5,
            Filter(must_match={"brand": "NoSuchBrand"}),
        )
        == []
    )


def test_fused_search_is_rrf_of_the_branches(shared):
    store, records = shared
    rng = np.random.default_rng(3)
    for weights, k in [((1.0, 1.0), RRF_K), ((3.0, 1.0), RRF_K), ((1.0, 1.0), 60), ((0.5, 1.0), 60)]:
        prefetches = [
            Prefetch("text", rng.standard_normal(TEXT_DIM), 30, weights[0]),
            Prefetch("cf", rng.standard_normal(CF_DIM), 30, weights[1]),
        ]
        for flt in (None, FILTERS[2]):
            want = expected_rrf(records, prefetches, flt, k)
            hits = store.fused_search(prefetches, 10, flt, exact=True, rrf_k=k)
            assert len(hits) == 10
            assert [h.score for h in hits] == pytest.approx(
                sorted(want.values(), reverse=True)[:10], abs=1e-6
            )
            for h in hits:
                assert h.score == pytest.approx(want[h.id], abs=1e-6)
                assert "pid" not in h.payload and "category_paths" not in h.payload


def test_id_only_fused_search_matches_and_follows_writes(filled):
    store, _ = filled
    rng = np.random.default_rng(5)
    prefetches = [Prefetch("text", rng.standard_normal(TEXT_DIM), 30), Prefetch("cf", rng.standard_normal(CF_DIM), 30)]
    full = store.fused_search(prefetches, 60, FILTERS[2], exact=True)  # the whole fused pool: ties cannot cut
    store.warm()  # every backend: builds its lookups (edge: the point-id map) or does nothing
    ids_only = store.fused_ids(prefetches, 60, FILTERS[2], exact=True)
    assert sorted(ids_only) == sorted(h.id for h in full)
    scores = {h.id: h.score for h in full}
    assert [scores[i] for i in ids_only] == sorted(scores.values(), reverse=True)
    gone = ids_only[0]
    store.delete([gone])
    after = store.fused_ids(prefetches, 10, FILTERS[2], exact=True)
    assert gone not in after
    store.upsert([Record("fresh-item", {"text": prefetches[0].vector, "cf": prefetches[1].vector},
                         {"title": "fresh", "in_stock": True, "price": 1.0})])
    top = store.fused_ids(prefetches, 3, None, exact=True)
    assert top[0] == "fresh-item"


def test_fused_results_do_not_tie_and_every_call_cuts_them_the_same_way(shared):
    store, records = shared
    rng = np.random.default_rng(8)
    prefetches = [Prefetch("text", rng.standard_normal(TEXT_DIM), 25), Prefetch("cf", rng.standard_normal(CF_DIM), 25)]
    plain = sorted(expected_rrf(records, prefetches, tie_break=False).values(), reverse=True)[:40]
    assert len(set(plain)) < len(plain) - 5  # unweighted, rank r in one branch alone scores what rank r in the other does
    full = store.fused_search(prefetches, 40, None, exact=True)
    assert len({h.score for h in full}) == len(full) == 40
    for limit in range(1, 41):  # every cut lands on the same products, in the same order
        ids = store.fused_ids(prefetches, limit, None, exact=True)
        assert ids == [h.id for h in full[:limit]], limit
        assert store.fused_keys(prefetches, limit, None, exact=True).tolist() == store.point_keys(ids).tolist()
    for _ in range(10):
        assert [h.id for h in store.fused_search(prefetches, 40, None, exact=True)] == [h.id for h in full]


def test_fused_keys_are_the_point_keys_of_fused_ids_and_stay_stable(filled):
    store, records = filled
    rng = np.random.default_rng(6)
    prefetches = [Prefetch("text", rng.standard_normal(TEXT_DIM), 30), Prefetch("cf", rng.standard_normal(CF_DIM), 30)]
    ids = store.fused_ids(prefetches, 60, FILTERS[2], exact=True)  # the whole fused pool: ties cannot cut
    keys = store.fused_keys(prefetches, 60, FILTERS[2], exact=True)
    assert keys.dtype == np.int64 and len(keys) == len(ids)
    assert sorted(keys.tolist()) == sorted(store.point_keys(ids).tolist())
    every = store.point_keys([r.id for r in records])
    assert len(set(every.tolist())) == len(records) and every.min() >= 0
    assert every.max() < 4 * len(records)  # dense: arrays indexed by key stay small
    store.upsert(records[:3])  # re-upserting keeps the keys
    assert store.point_keys([r.id for r in records]).tolist() == every.tolist()
    store.upsert([Record("fresh-key", {"text": prefetches[0].vector, "cf": prefetches[1].vector},
                         {"title": "fresh", "in_stock": True, "price": 1.0})])
    fresh = int(store.point_keys(["fresh-key"])[0])
    assert fresh not in set(every.tolist())
    assert int(store.fused_keys(prefetches, 1, None, exact=True)[0]) == fresh


def test_bad_ids_payloads_and_ranges_are_clear_errors_and_store_nothing(filled):
    store, records = filled
    vectors = records[0].vectors
    for bad in (Record("", vectors, {"title": "no id"}), Record("INF-1", vectors, {"price": float("inf")})):
        with pytest.raises(IndexStoreError):
            store.upsert([bad])
    assert store.count() == len(records)
    with pytest.raises(IndexStoreError, match="NaN"):
        store.search("text", vectors["text"], 5, Filter(ranges={"price": (float("nan"), 10.0)}))


def test_set_payload_updates_filters_and_skips_unknown_ids(filled):
    store, records = filled
    target = records[1]
    assert target.payload["in_stock"] is True
    store.set_payload([target.id, "no-such-id"], {"in_stock": False, "price": 9.5})
    assert store.count() == len(records)
    got = store.retrieve([target.id])[0].payload
    assert got["in_stock"] is False and got["price"] == 9.5 and got["title"] == target.payload["title"]
    in_stock = store.search("text", target.vectors["text"], 200, Filter(must_match={"in_stock": True}))
    assert target.id not in {h.id for h in in_stock}
    store.set_payload([target.id], {"category": ["Garden", "Tools"]})
    hits = store.search("text", target.vectors["text"], 5, Filter(category_prefix=("Garden", "Tools")))
    assert [h.id for h in hits] == [target.id]


def test_delete(filled):
    store, records = filled
    gone = [records[0].id, records[10].id, "never-existed"]
    store.delete(gone)
    assert store.count() == len(records) - 2
    assert store.retrieve(gone) == []
    hits = store.search("text", records[10].vectors["text"], 5, exact=True)
    assert records[10].id not in {h.id for h in hits}
    store.delete([])
    assert store.count() == len(records) - 2


def test_bad_vectors_are_rejected_before_anything_is_written(store):
    good = make_records(5)
    bad = Record("BAD", {"text": np.ones(TEXT_DIM + 1), "cf": np.ones(CF_DIM)}, {})
    with pytest.raises(IndexStoreError, match=rf"'text'.*{TEXT_DIM}.*{TEXT_DIM + 1}"):
        store.upsert(good + [bad])
    assert store.count() == 0
    with pytest.raises(IndexStoreError, match="'nope'"):
        store.upsert([Record("X", {"nope": np.ones(3)}, {})])
    with pytest.raises(IndexStoreError, match="NaN"):
        store.upsert([Record("X", {"cf": np.full(CF_DIM, np.nan)}, {})])
    with pytest.raises(IndexStoreError, match="reserved"):
        store.upsert([Record("X", {"cf": np.ones(CF_DIM)}, {"category_paths": ["x"]})])
    with pytest.raises(IndexStoreError, match="not JSON"):
        store.upsert([Record("X", {"cf": np.ones(CF_DIM)}, {"when": object()})])
    assert store.count() == 0


def test_bad_queries(shared):
    store, _ = shared
    with pytest.raises(IndexStoreError, match=rf"'cf'.*{CF_DIM}"):
        store.search("cf", np.ones(CF_DIM + 2), 5)
    with pytest.raises(IndexStoreError, match="'nope'"):
        store.search("nope", np.ones(CF_DIM), 5)
    with pytest.raises(IndexStoreError, match=rf"'text'.*{TEXT_DIM}"):
        store.fused_search([Prefetch("text", np.ones(3)), Prefetch("cf", np.ones(CF_DIM))], 5)
    with pytest.raises(IndexStoreError, match="prefetch"):
        store.fused_search([], 5)
    with pytest.raises(IndexStoreError, match="rrf_k"):
        store.fused_search([Prefetch("cf", np.ones(CF_DIM))], 5, rrf_k=0)
    assert store.search("text", np.ones(TEXT_DIM), 0) == []


def test_payload_numpy_values_and_nan_price_are_stored_as_json(store):
    rec = Record(
        "N1",
        {"cf": np.ones(CF_DIM)},
        {"price": np.float64("nan"), "rank": np.int64(3), "category": ("A", "B"), "in_stock": np.True_},
    )
    store.upsert([rec])
    assert store.retrieve(["N1"])[0].payload == {
        "price": None,
        "rank": 3,
        "category": ["A", "B"],
        "in_stock": True,
    }


def test_closed_store_refuses_work(store):
    store.close()
    store.close()  # idempotent
    with pytest.raises(IndexStoreError, match="closed"):
        store.count()


def test_data_survives_reopen(backend, open_backend):
    if backend not in PERSISTENT:
        pytest.skip("in-memory backend")
    first = open_backend()
    first.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
    records = make_records(60)
    first.upsert(records)
    first.set_payload([records[0].id], {"in_stock": False})
    first.delete([records[1].id])
    q = np.random.default_rng(5).standard_normal(TEXT_DIM)
    before = [h.id for h in first.search("text", q, 10, exact=True)]
    first.close()
    second = open_backend()
    assert second.count() == 59
    assert [h.id for h in second.search("text", q, 10, exact=True)] == before
    assert second.retrieve([records[0].id])[0].payload["in_stock"] is False
    with pytest.raises(IndexStoreError, match=rf"'text'.*{TEXT_DIM}.*{TEXT_DIM * 2}"):
        second.ensure_collection([VectorSpec("text", TEXT_DIM * 2)], {})


def test_second_open_of_the_same_directory_is_refused(backend, open_backend):
    if backend not in PERSISTENT:
        pytest.skip("in-memory backend")
    first = open_backend()
    first.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
    with pytest.raises(IndexStoreError, match="locked"):
        open_backend()
    first.close()
    assert open_backend().count() == 0


def test_path_override(backend, tmp_path):
    if backend == "qdrant-memory":
        pytest.skip("no path")
    settings = _settings(backend, tmp_path)
    store = open_store(settings, path_override=tmp_path / "elsewhere")
    try:
        store.ensure_collection(SPECS, {})
        store.upsert(make_records(3))
        assert any((tmp_path / "elsewhere").iterdir())
        assert not settings.path.exists()
    finally:
        store.close()
