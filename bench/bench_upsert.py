"""One-product upserts vs the bare work an upsert cannot avoid, on Dunnhumby's real catalogue.

- Product path: `BundlePipeline.add_products` with one product: a new product, a price and stock change, and a
  title change, each repeated (a fresh product id or another existing product every time). It encodes the text
  when it is new, commits the product to the ingest journal (durable before it is applied), writes the product's
  rows of the signals and of the retriever's lookups, and upserts the record into qdrant-edge (flushed).
- Bare: the same product's text through the bare encoder (not for a price change: its text is unchanged) and
  the same record upserted into the engine — what any upsert pays.
- Full rebuild: `HybridRetriever.refresh()` without rows (every lookup rebuilt from the catalogue), the cost
  product upserts paid in the writer before they became row-level (session 12).
Each repeat runs the product call, then the bare work on the record it wrote (same process; for a new product
the bare upsert overwrites the point the product call inserted). Writes bench/results/upsert.json and prints a
table.

    .venv/bin/python bench/bench_upsert.py [--sizes 10000 92331] [--repeats 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import provenance
from bench_retrieval import indexed_pipeline, pct, sized, write_json
from rag_rec.data.dunnhumby import load_dunnhumby
from rag_rec.data.journal import IngestJournal
from rag_rec.index.edge import EdgeStore
from rag_rec.schemas import ProductIn, ProductsIn
from rag_rec.settings import Settings

console = Console(width=120)


def bench_size(ds, settings: Settings, repeats: int) -> dict:
    from rag_rec.signals.suite import fit_signals

    signals = fit_signals(ds, settings, console=console)
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp) / "idx", collection="products")
        store, pipe, _ = indexed_pipeline(ds, settings, signals, tmp, store,
                                          journal=IngestJournal(Path(tmp) / "journal.sqlite"))
        pipe.retriever.warm()
        encoder = signals.encoder
        existing = list(ds.products.values())[: 2 * repeats + 10]

        def item(p, **change) -> ProductIn:
            fields = {"id": p.id, "title": p.title, "category": list(p.category), "brand": p.brand,
                      "price": p.price, "in_stock": p.in_stock}
            return ProductIn(**{**fields, **change})

        cases = {
            "new": lambda n: item(existing[0], id=f"BENCH-NEW-{n}", title=f"organic oat drink barista {n} 1l"),
            "price": lambda n: item(existing[n], price=float(n) + 0.99, in_stock=n % 2 == 0),
            "title": lambda n: item(existing[repeats + n], title=f"{existing[repeats + n].title} family pack {n}"),
        }
        out = {}
        for name, make in cases.items():
            product_s, bare_s = [], []
            for n in range(repeats + 2):
                request = ProductsIn(products=[make(n)])
                t = time.perf_counter()
                pipe.add_products(request)
                product_t = time.perf_counter() - t
                record = pipe.records([request.products[0].id])
                t = time.perf_counter()
                if name != "price":
                    encoder.encode([pipe.dataset.products[request.products[0].id].text()])
                store.upsert(record)
                bare_t = time.perf_counter() - t
                if n >= 2:  # the first calls grow the arrays' spare capacity once
                    product_s.append(product_t)
                    bare_s.append(bare_t)
            out[name] = {"product_p50_ms": pct(product_s, 50), "product_p95_ms": pct(product_s, 95),
                         "bare_p50_ms": pct(bare_s, 50), "bare_p95_ms": pct(bare_s, 95),
                         "p50_ratio": pct(product_s, 50) / pct(bare_s, 50)}
        rebuild = []
        for _ in range(5):
            t = time.perf_counter()
            pipe.retriever.refresh()
            rebuild.append(time.perf_counter() - t)
        pipe.close()
    return {"products": len(ds.products), "repeats": repeats, "cases": out,
            "full_rebuild_p50_ms": pct(rebuild, 50)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 92331])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "upsert.json"))
    args = parser.parse_args()
    settings = Settings(llm={"backend": "none"})
    full = load_dunnhumby()
    results = {**provenance.header(), "sizes": []}
    for size in args.sizes:
        results["sizes"].append(bench_size(sized(full, size), settings, args.repeats))
        console.log(results["sizes"][-1])
    write_json(args.out, results)
    table = Table(title="one-product upsert vs bare encode + engine upsert (ms, p50)")
    for col in ("products", "case", "bare", "product", "ratio", "product p95", "full rebuild"):
        table.add_column(col, justify="right")
    for r in results["sizes"]:
        for name, c in r["cases"].items():
            table.add_row(str(r["products"]), name, f"{c['bare_p50_ms']:.1f}", f"{c['product_p50_ms']:.1f}",
                          f"{c['p50_ratio']:.2f}x", f"{c['product_p95_ms']:.1f}", f"{r['full_rebuild_p50_ms']:.0f}")
    console.print(table)


if __name__ == "__main__":
    main()
