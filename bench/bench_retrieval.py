"""Hybrid retrieval vs the bare engine, and indexing vs the bare encoder, on Dunnhumby's real catalogue.

- Retrieval: for the same anchors, the bare engine query is the exact fused request the retriever sends
  (text + cf prefetch, RRF, same filter) issued straight to qdrant-edge without payloads, reading the hits'
  point ids (the least any caller does with a result; integers since index format 2) — the query without
  reading them is timed too (`query_only_*`, `p95_ratio_vs_query_only`); the product path is
  HybridRetriever.retrieve (that query + co-occurrence partners + explained fusion + provenance), also timed
  without its lexical feature (`hybrid_without_lexical_*`) and with the numpy reference fusion instead of the
  compiled one (`hybrid_numpy_fusion_*`). The five
  calls alternate per anchor in rotating order (whichever runs second on an anchor finds the engine's memory
  warm), same process. The queries are measured in several rounds (default 5) on the same index; the JSON holds
  the round with the median p95 ratio and every round's ratio (this shared machine drifts by +-0.2x between
  runs). Sizes: a 10k-product slice and the full 92k catalogue.
- Indexing: texts -> vectors with the bare encoder vs the product's indexing (encode + build records +
  upsert into the engine), on the same fresh texts (no cache), alternating per chunk of 500.
Writes bench/results/retrieval.json and prints a table.

    .venv/bin/python bench/bench_retrieval.py [--sizes 10000 92331] [--queries 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import provenance

from rag_rec.data.dunnhumby import load_dunnhumby
from rag_rec.data.models import Interactions
from rag_rec.index import PRODUCT_PAYLOAD_INDEXES, Filter, VectorSpec, open_store
from rag_rec.index.common import TIE_BREAK
from rag_rec.index.edge import EdgeStore
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.retrieve.hybrid import HybridRetriever
from rag_rec.settings import Settings

console = Console(width=120)


def pct(values, q):
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def slice_dataset(ds, n_products: int):
    """The n most purchased products and the basket lines over them."""
    counts = ds.interactions.frame["item_id"].value_counts()
    keep = list(counts.index[:n_products])
    rest = [p for p in ds.products if p not in set(keep)]
    keep = (keep + rest)[:n_products]
    keep_set = set(keep)
    frame = ds.interactions.frame[ds.interactions.frame["item_id"].isin(keep_set)]
    sessions = {}
    for sid, s in ds.sessions.items():
        items = tuple(i for i in s.items if i in keep_set)
        if items:
            sessions[sid] = replace(s, items=items)
    return replace(ds, products={p: ds.products[p] for p in keep}, interactions=Interactions(frame.copy()),
                   sessions=sessions, name=f"{ds.name}-{n_products}")


def sized(full, size: int):
    """The whole catalogue, or the slice of its `size` most purchased products."""
    return full if size >= len(full.products) else slice_dataset(full, size)


def write_json(path: str, doc: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(provenance.finish(doc) if "load_average_start" in doc else doc, indent=2))


def bare_query(store: EdgeStore, signals, retriever: HybridRetriever, settings: Settings, flt: Filter):
    """The least a caller does for an anchor: its stored vectors (the engine normalises for cosine itself), the
    retriever's fused request (same branches, limits, RRF k and weights, filter), the hits' ids."""
    shard, qe = store._open_shard(), store._qe
    n, rrf_k = settings.retrieve.prefetch_k, settings.retrieve.rrf_k
    two_branch_weights = [1.0, 1.0 - TIE_BREAK]  # what the store sends for a text + cf request

    def bare(anchor: str, read_ids: bool = True):
        i = signals.vocab.index[anchor]
        branches = [qe.Prefetch(limit=n, query=qe.Query.Nearest(signals.text_vectors[i].tolist(), using="text"))]
        cfq = retriever.scorer.cf_query([i], None)
        if cfq is not None:
            branches.append(qe.Prefetch(limit=n, query=qe.Query.Nearest(cfq.tolist(), using="cf")))
        weights = two_branch_weights if len(branches) == 2 else None
        request = qe.QueryRequest(limit=n, prefetches=branches, query=qe.Fusion.Rrf(k=rrf_k, weights=weights),
                                  filter=store._filter(Filter(flt.must_match, (anchor,))), with_payload=False)
        points = shard.query(request)
        return [p.id for p in points] if read_ids else points

    return bare


def indexed_pipeline(ds, settings: Settings, signals, tmp: str | Path, store=None, **pipeline_args):
    """(store, pipeline, seconds the build took): the catalogue indexed through the product's pipeline into `store`,
    by default a fresh qdrant-edge store under `tmp` with the settings' search pool."""
    from rag_rec.pipeline import BundlePipeline

    store = store if store is not None else open_store(settings.index, path_override=Path(tmp) / "idx")
    pipe = BundlePipeline(settings.model_copy(update={"index": settings.index.model_copy(
        update={"path": Path(tmp)})}), ds, signals, store, **pipeline_args)
    t0 = time.perf_counter()
    pipe.sync_index(rebuild=True, console=console)
    return store, pipe, time.perf_counter() - t0


def bench_retrieval(ds, settings: Settings, queries: int, rng, rounds: int = 5) -> dict:
    from rag_rec.signals.suite import fit_signals

    t0 = time.perf_counter()
    signals = fit_signals(ds, settings, console=console)
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        store, pipe, index_s = indexed_pipeline(ds, settings, signals, tmp)
        retriever = pipe.retriever
        reference = HybridRetriever(store, signals, ds.products,
                                    settings.retrieve.model_copy(update={"fusion_backend": "numpy"}))
        reference.warm()
        popular = np.argsort(-signals.popularity.counts)[:2000]
        anchors = [signals.vocab.ids[i] for i in rng.choice(popular, size=queries)]
        flt = Filter(must_match={"in_stock": True})
        bare = bare_query(store, signals, retriever, settings, flt)

        for a in anchors[:20]:
            bare(a)
            retriever.retrieve(RetrievalRequest(anchors=(a,), filter=flt, k=40))
        lexical = signals.lexical

        def without_lexical(a: str) -> None:
            signals.lexical = None
            try:
                retriever.retrieve(RetrievalRequest(anchors=(a,), filter=flt, k=40))
            finally:
                signals.lexical = lexical

        def timed(call, into: list) -> None:
            t = time.perf_counter()
            call()
            into.append(time.perf_counter() - t)

        measured = []
        for _ in range(rounds):
            t_bare, t_query_only, t_hybrid, t_no_lexical, t_numpy = [], [], [], [], []
            for n_query, a in enumerate(anchors):
                calls = [(lambda a=a: bare(a, read_ids=False), t_query_only), (lambda a=a: bare(a), t_bare),
                         (lambda a=a: retriever.retrieve(RetrievalRequest(anchors=(a,), filter=flt, k=40)), t_hybrid),
                         (lambda a=a: without_lexical(a), t_no_lexical),
                         (lambda a=a: reference.retrieve(RetrievalRequest(anchors=(a,), filter=flt, k=40)), t_numpy)]
                # a later call on an anchor finds the engine's memory warm: rotate who goes first (and shift the
                # rotation each round, so no method meets the same anchors cold in every round)
                turn = (n_query + len(measured)) % len(calls)
                for call, into in calls[turn:] + calls[:turn]:
                    timed(call, into)
            measured.append(round_stats(t_bare, t_query_only, t_hybrid, t_no_lexical, t_numpy))
        table = retriever.scorer.table()
        store.close()
    ratios = [m["p95_ratio"] for m in measured]
    median = measured[int(np.argsort(ratios)[len(ratios) // 2])]
    return {
        "products": len(ds.products), "baskets": len(ds.sessions), "queries": queries,
        "fit_signals_s": round(fit_s, 2), "index_s": round(index_s, 2), **median,
        "item_table_mb": round(table.rows.nbytes / 1e6, 1),
        "item_table_text_mb": round(table.rows[:, table.text].nbytes / 1e6, 1),
        "text_vectors_mb": round(signals.text_vectors.nbytes / 1e6, 1),
        "rounds": len(measured), "p95_ratio_rounds": ratios, "search_threads": settings.index.search_threads,
    }


def round_stats(t_bare, t_query_only, t_hybrid, t_no_lexical, t_numpy) -> dict:
    return {
        "bare_p50_ms": pct(t_bare, 50), "bare_p95_ms": pct(t_bare, 95), "bare_p99_ms": pct(t_bare, 99),
        "hybrid_p50_ms": pct(t_hybrid, 50), "hybrid_p95_ms": pct(t_hybrid, 95), "hybrid_p99_ms": pct(t_hybrid, 99),
        "p95_ratio": pct(t_hybrid, 95) / pct(t_bare, 95), "p50_ratio": pct(t_hybrid, 50) / pct(t_bare, 50),
        "query_only_p50_ms": pct(t_query_only, 50), "query_only_p95_ms": pct(t_query_only, 95),
        "p95_ratio_vs_query_only": pct(t_hybrid, 95) / pct(t_query_only, 95),
        "hybrid_without_lexical_p50_ms": pct(t_no_lexical, 50), "hybrid_without_lexical_p95_ms": pct(t_no_lexical, 95),
        "p95_ratio_without_lexical": pct(t_no_lexical, 95) / pct(t_bare, 95),
        "hybrid_numpy_fusion_p50_ms": pct(t_numpy, 50), "hybrid_numpy_fusion_p95_ms": pct(t_numpy, 95),
        "p95_ratio_numpy_fusion": pct(t_numpy, 95) / pct(t_bare, 95),
    }


def bench_indexing(ds, settings: Settings, n: int) -> dict:
    """Bare encoder vs the product's indexing of the same n fresh product texts: encode through the embedding
    cache (a fresh one, so every text is encoded and written), records with the text and cf vectors and the
    payload, upsert in the pipeline's batches, and the engine's HNSW build (optimize) at the end."""
    from rag_rec.index import Record
    from rag_rec.pipeline import product_payload
    from rag_rec.signals.als import ALSScorer
    from rag_rec.signals.text import EmbeddingCache, SentenceTransformerEncoder, encode_cached

    encoder = SentenceTransformerEncoder(settings.embedding)
    part = slice_dataset(ds, n)
    products = list(part.products.values())
    als = ALSScorer(settings.cf).fit(part)  # CF factors are signals, not indexing: fitted before the clock
    texts = [f"{p.text()} #{k}" for k, p in enumerate(products)]
    encoder.encode(texts[:64])
    bare_s = product_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp) / "embeddings.sqlite")
        store = EdgeStore(Path(tmp) / "idx", collection="products")
        store.ensure_collection([VectorSpec("text", encoder.dim, "cosine"), VectorSpec("cf", settings.cf.als_factors, "dot")],
                                PRODUCT_PAYLOAD_INDEXES)
        # chunk by chunk, bare then product on the same texts: this machine drifts too much for two long runs
        for start in range(0, len(products), 1024):
            chunk, chunk_texts = products[start:start + 1024], texts[start:start + 1024]
            t = time.perf_counter()
            encoder.encode(chunk_texts)
            bare_s += time.perf_counter() - t
            t = time.perf_counter()
            vectors = encode_cached(encoder, chunk_texts, cache)
            records = []
            for p, v in zip(chunk, vectors):
                cf = als.item_vector(p.id)
                records.append(Record(p.id, {"text": v} if cf is None else {"text": v, "cf": cf}, product_payload(p)))
            store.upsert(records)
            product_s += time.perf_counter() - t
        t = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - t
        product_s += optimize_s
        assert store.count() == len(products)
        store.close()
        cache.close()
    return {"texts": len(products), "bare_encoder_per_s": len(products) / bare_s,
            "indexing_per_s": len(products) / product_s, "optimize_s": round(optimize_s, 3),
            "ratio": bare_s / product_s,
            "product_path": "encode_cached (fresh cache) + text and cf records + upsert per 1,024 + optimize"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 92331])
    parser.add_argument("--queries", type=int, default=1000,
                        help="anchors per round; a p95 of 300 rests on its 15 slowest calls and moved by +-0.03x "
                             "between runs")
    parser.add_argument("--rounds", type=int, default=5, help="measure the queries this many times; report the median")
    parser.add_argument("--index-texts", type=int, default=3000)
    parser.add_argument("--search-threads", type=int, default=Settings().index.search_threads,
                        help="the engine's search pool (index.search_threads); 0: the engine's default")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval.json"))
    args = parser.parse_args()
    settings = Settings(llm={"backend": "none"}, index={"search_threads": args.search_threads})
    full = load_dunnhumby()
    rng = np.random.default_rng(0)
    results = {**provenance.header(), "retrieval": [], "indexing": None}  # write_json adds the end's load
    for size in args.sizes:
        results["retrieval"].append(bench_retrieval(sized(full, size), settings, args.queries, rng, args.rounds))
        console.log(results["retrieval"][-1])
    results["indexing"] = bench_indexing(full, settings, args.index_texts)
    write_json(args.out, results)
    table = Table(title="hybrid retrieval vs bare engine (ms)")
    for col in ("products", "bare p50", "bare p95", "hybrid p50", "hybrid p95", "hybrid p99", "p95 ratio"):
        table.add_column(col, justify="right")
    for r in results["retrieval"]:
        table.add_row(str(r["products"]), f"{r['bare_p50_ms']:.2f}", f"{r['bare_p95_ms']:.2f}",
                      f"{r['hybrid_p50_ms']:.2f}", f"{r['hybrid_p95_ms']:.2f}", f"{r['hybrid_p99_ms']:.2f}",
                      f"{r['p95_ratio']:.2f}x")
    console.print(table)
    ix = results["indexing"]
    console.print(f"indexing: bare encoder {ix['bare_encoder_per_s']:.0f}/s, product {ix['indexing_per_s']:.0f}/s, "
                  f"ratio {ix['ratio']:.2f}")


if __name__ == "__main__":
    main()
