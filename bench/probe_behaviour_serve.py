"""What `behaviour.serve` costs a served request on Dunnhumby's full catalogue (92k products).

Fits the signals with the Transformer behaviour model (as a start with `behaviour.serve` does), indexes the
catalogue in qdrant-edge, then times the same requests (a known shopper with one anchor, in-stock filter, k=40)
through one retriever with the behaviour feature and without it, alternating per request. Both take the compiled
fusion; every request is a new sequence for the model, so none is served from its cache of catalogue scans.
Writes bench/results/behaviour_serve.json.

    .venv/bin/python bench/probe_behaviour_serve.py [--queries 500] [--epochs 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import provenance
from bench_retrieval import console, indexed_pipeline, pct, write_json
from rag_rec.data.dunnhumby import load_dunnhumby
from rag_rec.errors import require
from rag_rec.index import Filter
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.settings import Settings


def main() -> None:
    from rag_rec.signals.suite import fit_signals

    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=Settings().behaviour.epochs,
                        help="training epochs; a request's cost does not depend on them (the network's size does)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "behaviour_serve.json"))
    args = parser.parse_args()
    torch = require("torch", "text")
    torch.set_num_threads(1)  # as the image serves (OMP_NUM_THREADS=1): requests run in parallel, each on one thread
    settings = Settings(llm={"backend": "none"}, behaviour={"epochs": args.epochs})
    ds = load_dunnhumby()
    t0 = time.perf_counter()
    signals = fit_signals(ds, settings, behaviour=True, console=console)
    fit_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    users = [u for u in signals.behaviour.histories if signals.als.user_vector(u) is not None]
    popular = np.argsort(-signals.popularity.counts)[:2000]
    requests = [RetrievalRequest(user_id=str(users[u]), anchors=(signals.vocab.ids[a],),
                                 filter=Filter(must_match={"in_stock": True}), k=40)
                for u, a in zip(rng.integers(0, len(users), args.queries), rng.choice(popular, args.queries))]
    with tempfile.TemporaryDirectory() as tmp:
        store, pipe, _ = indexed_pipeline(ds, settings, signals, tmp)
        retriever, behaviour = pipe.retriever, signals.behaviour

        def without(request):
            signals.behaviour = None
            try:
                return retriever.retrieve(request)
            finally:
                signals.behaviour = behaviour

        for request in requests[:20]:
            retriever.retrieve(request)
            without(request)
        t_with, t_without, changed = [], [], 0
        for n, request in enumerate(requests):
            calls = [(retriever.retrieve, t_with), (without, t_without)]
            results = []
            for call, into in (calls if n % 2 else calls[::-1]):
                t = time.perf_counter()
                results.append(call(request))
                into.append(time.perf_counter() - t)
            ids = [[c.id for c in r.candidates[:10]] for r in results]
            changed += ids[0] != ids[1]
        store.close()
    doc = {**provenance.header(), "products": len(ds.products), "queries": len(requests), "epochs": args.epochs,
           "fit_signals_with_behaviour_s": round(fit_s, 1),
           "with_behaviour_p50_ms": pct(t_with, 50), "with_behaviour_p95_ms": pct(t_with, 95),
           "with_behaviour_p99_ms": pct(t_with, 99),
           "without_behaviour_p50_ms": pct(t_without, 50), "without_behaviour_p95_ms": pct(t_without, 95),
           "without_behaviour_p99_ms": pct(t_without, 99),
           "p95_ratio": pct(t_with, 95) / pct(t_without, 95), "top10_changed_share": changed / len(requests)}
    write_json(args.out, doc)
    console.print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in doc.items()
                   if "ms" in k or "ratio" in k or "share" in k or k.startswith("fit")})


if __name__ == "__main__":
    main()
