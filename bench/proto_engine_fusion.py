"""Would engine-side fusion meet the retrieval target (<= 1.2x the bare query)? A prototype, not the product path.

A raw qdrant-edge shard holds the retriever's signals as vectors: `text`, `cf` (dense) and `cooc` (sparse: each
item's co-occurrence partners with their complement scores). The prototype query fuses three prefetches (text,
cf, co-occurrence partners of the anchor) with a Formula (the retriever's weights) and returns the top 40;
the bare query is the text + cf RRF query the retriever sends today. Both on the same shard, integer point
ids, no filter, alternating calls; engine time only (no explanations, which would come on top).

    .venv/bin/python bench/proto_engine_fusion.py [products]   # writes bench/results/engine_fusion.json
"""
import json
from pathlib import Path
import sys, time, tempfile, numpy as np, qdrant_edge as qe
sys.path.insert(0, str(Path(__file__).parent))
from bench_retrieval import slice_dataset, console
from rag_rec.data.dunnhumby import load_dunnhumby
from rag_rec.settings import Settings
from rag_rec.signals.suite import fit_signals
size = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
settings = Settings(llm={"backend": "none"})
full = load_dunnhumby()
ds = full if size >= len(full.products) else slice_dataset(full, size)
s = fit_signals(ds, settings, console=console)
T = s.text_vectors; N = len(s.vocab)
from rag_rec.retrieve.hybrid import FusionScorer
sc = FusionScorer(s, settings.retrieve.weights)
rows, matrix = sc._cf_table()
cooc = s.cooc
norms = cooc.counts ** cooc.alpha
d = tempfile.mkdtemp()
cfg = qe.EdgeConfig(vectors={"text": qe.EdgeVectorParams(size=T.shape[1], distance=qe.Distance.Cosine),
                             "cf": qe.EdgeVectorParams(size=matrix.shape[1], distance=qe.Distance.Dot)},
                    sparse_vectors={"cooc": qe.EdgeSparseVectorParams()})
sh = qe.EdgeShard.create(d, cfg)
pts = []
for i in range(N):
    cols, vals = cooc._row(i)
    vec = {"text": T[i].tolist()}
    if rows[i] >= 0: vec["cf"] = matrix[rows[i]].tolist()
    if len(cols):
        w = np.clip(vals / (norms[i] * norms[cols]), 0, 1)
        vec["cooc"] = qe.SparseVector(cols.astype(int).tolist(), w.astype(float).tolist())
    pts.append(qe.Point(i + 1, vec, {"in_stock": True}))
    if len(pts) == 2000:
        sh.update(qe.UpdateOperation.upsert_points(pts)); pts = []
if pts: sh.update(qe.UpdateOperation.upsert_points(pts))
sh.optimize()
rng = np.random.default_rng(0)
popular = np.argsort(-s.popularity.counts)[:2000]
anchors = rng.choice(popular, size=300)
W = settings.retrieve.weights
def bare(a):
    q = T[a] / np.linalg.norm(T[a])
    br = [qe.Prefetch(limit=100, query=qe.Query.Nearest(q.tolist(), using="text")),
          qe.Prefetch(limit=100, query=qe.Query.Nearest(matrix[rows[a]].tolist(), using="cf"))]
    r = sh.query(qe.QueryRequest(limit=100, prefetches=br, query=qe.Fusion.Rrf(k=2), with_payload=False))
    return [p.id for p in r]
E = qe.Expression
formula = qe.Formula(E.Sum([E.Mult([E.Constant(W["text"] + W["text_max"]), E.Variable("$score[0]")]),
                            E.Mult([E.Constant(W["cf"]), E.Variable("$score[1]")]),
                            E.Mult([E.Constant(W["cooc"]), E.Variable("$score[2]")])]),
                     defaults={"$score[0]": 0.0, "$score[1]": 0.0, "$score[2]": 0.0})
def fused(a):
    q = T[a] / np.linalg.norm(T[a])
    br = [qe.Prefetch(limit=100, query=qe.Query.Nearest(q.tolist(), using="text")),
          qe.Prefetch(limit=100, query=qe.Query.Nearest(matrix[rows[a]].tolist(), using="cf")),
          qe.Prefetch(limit=100, query=qe.Query.Nearest(qe.SparseVector([int(a)], [1.0]), using="cooc"))]
    r = sh.query(qe.QueryRequest(limit=40, prefetches=br, query=formula, with_payload=False))
    return [(p.id, p.score) for p in r]
for a in anchors[:30]: bare(int(a)); fused(int(a))
tb, tf = [], []
for a in anchors:
    a = int(a)
    t = time.perf_counter(); bare(a); tb.append(time.perf_counter() - t)
    t = time.perf_counter(); fused(a); tf.append(time.perf_counter() - t)
p = lambda v, q: np.percentile(np.array(v) * 1000, q)
result = {"products": N, "queries": len(anchors), "bare_p50_ms": p(tb, 50), "bare_p95_ms": p(tb, 95),
          "formula_p50_ms": p(tf, 50), "formula_p95_ms": p(tf, 95), "p50_ratio": p(tf, 50) / p(tb, 50),
          "p95_ratio": p(tf, 95) / p(tb, 95)}
Path(__file__).parent.joinpath("results", "engine_fusion.json").write_text(json.dumps(result, indent=2))
print(f"bare p50 {p(tb,50):.3f} p95 {p(tb,95):.3f} | formula p50 {p(tf,50):.3f} p95 {p(tf,95):.3f} | ratio p95 {p(tf,95)/p(tb,95):.2f}")
