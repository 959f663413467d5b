"""Why the work after an engine query costs more than the same work in a loop: a probe.

The hybrid retriever's Python work after the engine call is several times dearer in a request than in a
tight loop. This probe times one fixed, small piece of that work — the text feature of the hits a query returns
(prefetch_k: 100): their vocabulary rows through the key table, a gather of their text vectors and one dot
product — in three states, alternating, same process, 10k products:

- warm: straight after the same work ran;
- after a fused engine query (the exact request the retriever sends, ids read);
- after summing a 32 MB array (a plain memory sweep, no engine).

If "after the engine" is as slow as or slower than "after a sweep", the engine call evicts the caller's working
set and every Python step after it pays memory latency. Writes bench/results/post_engine_probe.json.

    .venv/bin/python bench/probe_post_engine.py [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from bench_retrieval import indexed_pipeline, pct, slice_dataset

from rag_rec.data.dunnhumby import load_dunnhumby
from rag_rec.index import Filter
from rag_rec.index.base import Prefetch
from rag_rec.index.edge import EdgeStore
from rag_rec.settings import Settings

console = Console(width=120)


def caches() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)
            if "cache" in k.lower() or k.strip() in ("Model name", "CPU(s)")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "post_engine_probe.json"))
    args = parser.parse_args()
    from rag_rec.signals.suite import fit_signals

    settings = Settings(llm={"backend": "none"})
    ds = slice_dataset(load_dunnhumby(), args.size)
    signals = fit_signals(ds, settings, console=console)
    sweep = np.ones(32 * 2**20 // 8)
    rng = np.random.default_rng(0)
    popular = np.argsort(-signals.popularity.counts)[:2000]
    anchors = [signals.vocab.ids[i] for i in rng.choice(popular, size=args.queries)]
    flt = Filter(must_match={"in_stock": True})
    n = settings.retrieve.prefetch_k
    with tempfile.TemporaryDirectory() as tmp:
        store, pipe, _ = indexed_pipeline(ds, settings, signals, tmp,
                                          EdgeStore(Path(tmp) / "idx", collection="products"))
        scorer = pipe.retriever.scorer

        retriever = pipe.retriever
        retriever.warm()

        def engine_query(anchor: str) -> tuple[np.ndarray, np.ndarray]:
            idx = signals.vocab.known([anchor])
            q = signals.text_vectors[idx[0]]
            prefetches = [Prefetch("text", q / (np.linalg.norm(q) or 1.0), n)]
            cf = scorer.cf_query(idx, None)
            if cf is not None:
                prefetches.append(Prefetch("cf", cf, n))
            return store.fused_keys(prefetches, n, Filter(flt.must_match, (anchor,))), prefetches[0].vector

        def text_feature(found: tuple[np.ndarray, np.ndarray]) -> float:
            keys, q = found
            t = time.perf_counter()
            signals.text_vectors[retriever._rows_of_keys(keys)] @ q
            return time.perf_counter() - t

        times: dict[str, list[float]] = {"warm": [], "after_engine_query": [], "after_32mb_sweep": []}
        for anchor in anchors[:20]:
            text_feature(engine_query(anchor))
        for anchor in anchors:
            found = engine_query(anchor)
            times["after_engine_query"].append(text_feature(found))
            times["warm"].append(text_feature(found))
            sweep.sum()
            times["after_32mb_sweep"].append(text_feature(found))
        store.close()
    result = {
        "machine": f"{platform.machine()} {platform.release()}", "cpu": caches(), "products": args.size,
        "queries": args.queries, "work": f"text feature of {n} hits: key -> row table, vector gather, dot product",
        **{f"{k}_p50_us": pct(v, 50) * 1000 for k, v in times.items()},
        **{f"{k}_p95_us": pct(v, 95) * 1000 for k, v in times.items()},
    }
    result["after_engine_vs_warm_p50"] = result["after_engine_query_p50_us"] / result["warm_p50_us"]
    result["after_sweep_vs_warm_p50"] = result["after_32mb_sweep_p50_us"] / result["warm_p50_us"]
    Path(args.out).write_text(json.dumps(result, indent=2))
    console.print_json(json.dumps(result))


if __name__ == "__main__":
    main()
