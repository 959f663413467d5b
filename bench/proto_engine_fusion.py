"""Would engine-side fusion meet the retrieval target (<= 1.2x the bare query)? A prototype, not the product path.

A raw qdrant-edge shard holds the retriever's signals as vectors: `text`, `cf` (dense) and `cooc` (sparse: each
item's co-occurrence partners with their complement scores). The prototype query fuses three prefetches (text,
cf, co-occurrence partners of the anchor) with a Formula (the retriever's weights) and returns the top 40;
the bare query is the text + cf RRF query the retriever sends today. Both on the same shard, integer point
ids, no filter, alternating calls; engine time only (no explanations, which would come on top).

    .venv/bin/python bench/proto_engine_fusion.py [products]   # writes bench/results/engine_fusion.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_retrieval import console, slice_dataset

PREFETCH, TOP = 100, 40


def build_shard(qe, signals, cf_rows, cf_matrix):
    """text, cf and sparse co-occurrence vectors for every vocabulary item (point id = row + 1)."""
    cooc, text = signals.cooc, signals.text_vectors
    norms = cooc.counts ** cooc.alpha
    config = qe.EdgeConfig(vectors={"text": qe.EdgeVectorParams(size=text.shape[1], distance=qe.Distance.Cosine),
                                    "cf": qe.EdgeVectorParams(size=cf_matrix.shape[1], distance=qe.Distance.Dot)},
                           sparse_vectors={"cooc": qe.EdgeSparseVectorParams()})
    shard = qe.EdgeShard.create(tempfile.mkdtemp(), config)
    points = []
    for i in range(len(signals.vocab)):
        vectors = {"text": text[i].tolist()}
        if cf_rows[i] >= 0:
            vectors["cf"] = cf_matrix[cf_rows[i]].tolist()
        cols, vals = cooc._row(i)
        if len(cols):
            weights = np.clip(vals / (norms[i] * norms[cols]), 0.0, 1.0)
            vectors["cooc"] = qe.SparseVector(cols.astype(int).tolist(), weights.astype(float).tolist())
        points.append(qe.Point(i + 1, vectors, {"in_stock": True}))
        if len(points) == 2000:
            shard.update(qe.UpdateOperation.upsert_points(points))
            points = []
    if points:
        shard.update(qe.UpdateOperation.upsert_points(points))
    shard.optimize()
    return shard


def main() -> None:
    import qdrant_edge as qe

    from rag_rec.data.dunnhumby import load_dunnhumby
    from rag_rec.retrieve.hybrid import FusionScorer
    from rag_rec.settings import Settings
    from rag_rec.signals.suite import fit_signals

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    settings = Settings(llm={"backend": "none"})
    full = load_dunnhumby()
    signals = fit_signals(full if size >= len(full.products) else slice_dataset(full, size), settings,
                          console=console)
    cf_rows, cf_matrix = FusionScorer(signals, settings.retrieve.weights)._cf_table()
    shard = build_shard(qe, signals, cf_rows, cf_matrix)
    weights = settings.retrieve.weights
    expr = qe.Expression
    formula = qe.Formula(
        expr.Sum([expr.Mult([expr.Constant(weights["text"] + weights["text_max"]), expr.Variable("$score[0]")]),
                  expr.Mult([expr.Constant(weights["cf"]), expr.Variable("$score[1]")]),
                  expr.Mult([expr.Constant(weights["cooc"]), expr.Variable("$score[2]")])]),
        defaults={"$score[0]": 0.0, "$score[1]": 0.0, "$score[2]": 0.0})

    def dense_prefetches(anchor: int) -> list:
        q = signals.text_vectors[anchor] / np.linalg.norm(signals.text_vectors[anchor])
        return [qe.Prefetch(limit=PREFETCH, query=qe.Query.Nearest(q.tolist(), using="text")),
                qe.Prefetch(limit=PREFETCH, query=qe.Query.Nearest(cf_matrix[cf_rows[anchor]].tolist(), using="cf"))]

    def bare(anchor: int) -> list:
        request = qe.QueryRequest(limit=PREFETCH, prefetches=dense_prefetches(anchor), query=qe.Fusion.Rrf(k=2),
                                  with_payload=False)
        return [p.id for p in shard.query(request)]

    def engine_fused(anchor: int) -> list:
        cooc = qe.Prefetch(limit=PREFETCH, query=qe.Query.Nearest(qe.SparseVector([anchor], [1.0]), using="cooc"))
        request = qe.QueryRequest(limit=TOP, prefetches=dense_prefetches(anchor) + [cooc], query=formula,
                                  with_payload=False)
        return [(p.id, p.score) for p in shard.query(request)]

    popular = np.argsort(-signals.popularity.counts)[:2000]
    anchors = [int(a) for a in np.random.default_rng(0).choice(popular, size=300)]
    for anchor in anchors[:30]:
        bare(anchor), engine_fused(anchor)
    t_bare, t_fused = [], []
    for anchor in anchors:
        t = time.perf_counter()
        bare(anchor)
        t_bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine_fused(anchor)
        t_fused.append(time.perf_counter() - t)

    def pct(values, q):
        return float(np.percentile(np.asarray(values) * 1000.0, q))

    result = {"products": len(signals.vocab), "queries": len(anchors),
              "bare_p50_ms": pct(t_bare, 50), "bare_p95_ms": pct(t_bare, 95),
              "formula_p50_ms": pct(t_fused, 50), "formula_p95_ms": pct(t_fused, 95),
              "p50_ratio": pct(t_fused, 50) / pct(t_bare, 50), "p95_ratio": pct(t_fused, 95) / pct(t_bare, 95)}
    Path(__file__).parent.joinpath("results", "engine_fusion.json").write_text(json.dumps(result, indent=2))
    console.print(result)


if __name__ == "__main__":
    main()
