"""Why the fusion reads candidates from one item table: a probe.

After an engine query the caller's memory is cold, and a candidate pool's cost is set by how many separate cold
places each candidate touches. This probe gathers 200 random candidates' fusion inputs after a 32 MB memory sweep
(the same state an engine query leaves, bench/results/post_engine_probe.json), two ways, same process, alternating:

- arrays: one array per signal, as the signals keep them (key -> row map, text vectors, ALS factors, lexical term
  ids and weights, category, leaf and kind codes);
- table: the same fields side by side in one row per item (rag_rec/retrieve/item_table.py), one gather.

Synthetic values with the real shapes of the 92k-product Dunnhumby catalogue (384-d text, 64-d ALS, 13 lexical
terms). Writes bench/results/item_table_probe.json.

    .venv/bin/python bench/probe_item_table.py [--items 92331] [--pool 200] [--repeats 300]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=92331)
    parser.add_argument("--pool", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "item_table_probe.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.items
    text = rng.standard_normal((n, 384)).astype(np.float32)
    cf = rng.standard_normal((n, 64)).astype(np.float32)
    terms = rng.integers(0, 50_000, (n, 13)).astype(np.int32)
    weights = rng.random((n, 13)).astype(np.float32)
    category, leaf, kind = (rng.integers(0, 500, n) for _ in range(3))
    key_rows, cf_rows = np.arange(n), np.arange(n)
    table = np.hstack([text, cf, terms.view(np.float32), weights,
                       np.column_stack([category, leaf]).astype(np.int32).view(np.float32)])
    sweep = np.ones(32 * 2**20 // 8)
    times: dict[str, list[float]] = {"arrays": [], "table": []}
    for _ in range(args.repeats):
        keys = rng.integers(0, n, args.pool)
        for way in times:
            sweep.sum()
            t = time.perf_counter()
            if way == "arrays":
                rows = key_rows[keys]
                parts = (text[rows], cf[cf_rows[rows]], terms[rows], weights[rows], category[rows], leaf[rows],
                         kind[rows])
            else:
                parts = (table[key_rows[keys]], kind[keys])
            times[way].append(time.perf_counter() - t)
            del parts
    us = {way: np.asarray(v) * 1e6 for way, v in times.items()}
    result = {
        "machine": f"{platform.machine()} {platform.processor()}", "items": n, "pool": args.pool,
        "repeats": args.repeats, "state": "after a 32 MB memory sweep",
        "arrays_p50_us": float(np.percentile(us["arrays"], 50)), "arrays_p95_us": float(np.percentile(us["arrays"], 95)),
        "table_p50_us": float(np.percentile(us["table"], 50)), "table_p95_us": float(np.percentile(us["table"], 95)),
    }
    result["table_vs_arrays_p50"] = result["table_p50_us"] / result["arrays_p50_us"]
    result["table_vs_arrays_p95"] = result["table_p95_us"] / result["arrays_p95_us"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
