"""Requests beside a stream of product upserts, on the bundled electronic catalogue: reader threads retrieve
(stock filter on) while the writer upserts, back to back, a new product plus a title or stock change of an
existing one. Prints how many requests were served, how many runs the sequence lock redid, and any error.

    .venv/bin/python bench/stress_upserts.py [--seconds 90] [--readers 3]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time

from rag_rec.index.base import Filter
from rag_rec.pipeline import BundlePipeline
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.schemas import ProductIn, ProductsIn
from rag_rec.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--readers", type=int, default=3)
    args = parser.parse_args()
    pipeline = BundlePipeline.from_settings(Settings(index={"path": tempfile.mkdtemp()}, llm={"backend": "none"}))
    products, retriever = pipeline.dataset.products, pipeline.retriever
    anchors = [b.items[0] for b in pipeline.dataset.bundles[:50]]
    errors: list[str] = []
    served, runs = [0], [0]
    stop = threading.Event()
    run_once = retriever._retrieve

    def counted(request):
        runs[0] += 1
        return run_once(request)

    retriever._retrieve = counted

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            anchor = rng.choice(anchors + [f"STRESS-{m}" for m in range(0, 300, 7)])
            try:
                result = retriever.retrieve(RetrievalRequest(
                    anchors=(anchor,), filter=Filter(must_match={"in_stock": True}), k=20))
                if any(c.id not in products for c in result.candidates):
                    raise AssertionError("served an id outside the catalogue")
            except Exception as e:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(e))
                return
            served[0] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
    for t in threads:
        t.start()
    rng, writes, start = random.Random(1), 0, time.monotonic()
    while time.monotonic() - start < args.seconds:
        old = products[rng.choice(anchors)]
        pipeline.add_products(ProductsIn(products=[
            ProductIn(id=f"STRESS-{writes}", title=f"Stress test cable {writes}", category=list(old.category),
                      price=float(writes % 50)),
            ProductIn(id=old.id, title=old.title if writes % 2 else f"{old.title} v{writes}",
                      category=list(old.category), price=float(writes), in_stock=bool(writes % 3))]))
        writes += 1
    stop.set()
    for t in threads:
        t.join()
    table_rows = len(retriever.scorer.table().rows)
    print(f"upsert batches {writes}, requests {served[0]}, runs {runs[0]} ({runs[0] - served[0]} redone), "
          f"errors {len(errors)} {errors[:3]}, vocabulary {len(pipeline.signals.vocab)}, table rows {table_rows}")


if __name__ == "__main__":
    main()
