"""Both backends, loaded with the same records, return the same neighbours (exact search, filters, RRF)."""

from __future__ import annotations

import numpy as np
import pytest

from rag_rec.index import PRODUCT_PAYLOAD_INDEXES, Filter, Prefetch, Record, VectorSpec
from rag_rec.index.edge import EdgeStore
from rag_rec.index.qdrant import QdrantStore

TEXT, CF, N = 64, 16, 3000
SPECS = [VectorSpec("text", TEXT), VectorSpec("cf", CF, "dot")]
BRANDS = ["Acme", "Bolt", "Cirrus", "Dyna"]
CATEGORIES = [["Electronics", "Camera"], ["Electronics", "Audio", "Headphones"], ["Home", "Kitchen"]]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    rng = np.random.default_rng(2024)
    text = rng.standard_normal((N, TEXT)).astype(np.float32)
    # clustered cf vectors, like collaborative-filtering factors, so neighbour lists are not arbitrary
    centres = rng.standard_normal((20, CF)).astype(np.float32)
    cf = centres[rng.integers(0, 20, N)] + 0.3 * rng.standard_normal((N, CF)).astype(np.float32)
    records = [
        Record(
            f"ASIN{i:06d}",
            {"text": text[i], "cf": cf[i]},
            {
                "title": f"item {i}",
                "brand": BRANDS[i % 4],
                "category": CATEGORIES[i % 3],
                "price": float(rng.uniform(5, 500)),
                "in_stock": bool(rng.random() < 0.7),
            },
        )
        for i in range(N)
    ]
    # edge with thresholds low enough that optimize() builds real HNSW graphs
    edge = EdgeStore(tmp_path_factory.mktemp("edge"), full_scan_threshold_kb=1, indexing_threshold_kb=1)
    qdrant = QdrantStore(url=":memory:")
    for store in (edge, qdrant):
        store.ensure_collection(SPECS, PRODUCT_PAYLOAD_INDEXES)
        for start in range(0, N, 1000):
            store.upsert(records[start : start + 1000])
    edge.optimize()
    yield edge, qdrant, rng
    edge.close()
    qdrant.close()


FILTERS = [
    None,
    Filter(must_match={"in_stock": True}),
    Filter(must_match={"brand": ["Acme", "Dyna"]}, ranges={"price": (50.0, 300.0)}),
    Filter(category_prefix=("Electronics", "Audio"), must_not_ids=("ASIN000001", "ASIN000004")),
]


@pytest.mark.parametrize("flt", FILTERS, ids=["none", "in_stock", "brand+price", "prefix+not_ids"])
def test_same_exact_top_k(stores, flt):
    edge, qdrant, rng = stores
    assert edge.count() == qdrant.count() == N
    for _ in range(10):
        for using, dim in (("text", TEXT), ("cf", CF)):
            q = rng.standard_normal(dim)
            a = edge.search(using, q, 10, flt, exact=True)
            b = qdrant.search(using, q, 10, flt, exact=True)
            assert [h.id for h in a] == [h.id for h in b]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
            # qdrant-edge parses payload floats to within 1 ulp (not bit-exact); everything else is identical
            assert [{**h.payload, "price": None} for h in a] == [{**h.payload, "price": None} for h in b]
            assert [h.payload["price"] for h in a] == pytest.approx(
                [h.payload["price"] for h in b], rel=1e-12
            )


@pytest.mark.parametrize("flt", FILTERS, ids=["none", "in_stock", "brand+price", "prefix+not_ids"])
def test_same_fused_top_k(stores, flt):
    edge, qdrant, rng = stores
    for weights in ((1.0, 1.0), (1.0, 0.6)):
        q = [
            Prefetch("text", rng.standard_normal(TEXT), 50, weights[0]),
            Prefetch("cf", rng.standard_normal(CF), 50, weights[1]),
        ]
        a = edge.fused_search(q, 20, flt, exact=True)
        b = qdrant.fused_search(q, 20, flt, exact=True)
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
        # the stores' tie-break weights leave no equal scores to come in either order: the same hits, same order
        assert len({h.score for h in a}) == len(a) == 20
        assert [h.id for h in a] == [h.id for h in b]


def test_hnsw_top_k_agrees_with_the_exact_backend(stores):
    edge, qdrant, rng = stores
    overlap = []
    for _ in range(30):
        q = rng.standard_normal(TEXT)
        approx = {h.id for h in edge.search("text", q, 10)}
        exact = {h.id for h in qdrant.search("text", q, 10)}
        overlap.append(len(approx & exact) / 10)
    assert np.mean(overlap) >= 0.9
