"""Where the compiled call's cold cost goes: capture real requests once, then replay them in chosen cache states.

The hybrid retriever spends most of its overhead over the bare engine query in one compiled call after the
engine (fusion_kernel.fuse_anchor_request). Rebuilding a 92k index to try each idea takes minutes and this
machine drifts by +-30 us between blocks of calls, so this probe:

- `capture`: builds the 92k Dunnhumby pipeline once and pickles the compiled call's arguments for N real
  one-anchor requests (the same popular anchors and stock filter as bench_retrieval.py);
- `replay`: times the compiled call on those arguments, interleaving per request (the order alternates):
  - warm: straight after the same call;
  - cold: after a 96 MB memory sweep (no engine: its eviction without its noise);
  - code warmed: after the sweep, a call on a small request of the same types first (a 2,000-row slice of the
    table: it warms the machine code, not this request's data);
  - the small request alone after the sweep.

"cold" minus "code warmed" is what instruction fetch costs a cold call. Writes
bench/results/kernel_replay.json.

- `compare --against FILE`: the same requests through another version of fusion_kernel.py (e.g. `git show
  REV:rag_rec/retrieve/fusion_kernel.py > /tmp/old_kernel.py`) and the current one, interleaved per request
  (cold after the sweep, then warm), with the outputs checked equal. Separate replay runs drift by tens of
  microseconds on this machine; only such paired runs resolve a change of ~10 us. Writes
  bench/results/kernel_replay_compare.json.

    .venv/bin/python bench/probe_kernel_replay.py capture [--requests 300] [--out PATH]
    .venv/bin/python bench/probe_kernel_replay.py replay [--rounds 3] [--out PATH]
    .venv/bin/python bench/probe_kernel_replay.py compare --against FILE [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from bench_retrieval import indexed_pipeline, write_json

from rag_rec.machine import cpu_model
from rag_rec.retrieve import fusion_kernel

console = Console(width=120)
DEFAULT_CAPTURE = Path.home() / ".cache" / "rag_rec" / "kernel_replay.pkl"
ARGUMENTS = ("rows row_ints t0 dt c0 dc l0 lw w0 code_col leaf_col pair_indptr pair_indices pair_data category_count "
             "category_bonus "
             "cooc_indptr cooc_indices cooc_data norms complement leaf_discount has name_rows weights covered "
             "key_rows keys k anchor_rows text_q text_div cf_q need_q kinds kind_discount n_partners excluded stock "
             "want_stock price low high").split()  # fusion_kernel._anchor_request_kernel's signature
AT = {name: n for n, name in enumerate(ARGUMENTS)}
BIG = 1 << 20  # arrays above this many bytes are shared by every request: pickled once
SWEEP_MB = 96  # the memory summed between calls to leave a call's data and code cold


def percentiles_us(times: dict[str, list[float]]) -> dict[str, float]:
    """p50 and p95 in microseconds of each named list of seconds."""
    return {f"{name}_p{q}_us": float(np.percentile(values, q) * 1e6) for name, values in times.items() for q in (50, 95)}


def capture(requests: int, out: Path) -> None:
    from rag_rec.data.dunnhumby import load_dunnhumby
    from rag_rec.index import Filter
    from rag_rec.index.edge import EdgeStore
    from rag_rec.retrieve.base import RetrievalRequest
    from rag_rec.settings import Settings
    from rag_rec.signals.suite import fit_signals

    ds = load_dunnhumby()
    settings = Settings(llm={"backend": "none"})
    signals = fit_signals(ds, settings, console=console)
    captured: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        store, pipe, _ = indexed_pipeline(ds, settings, signals, tmp,
                                          EdgeStore(Path(tmp) / "idx", collection="products"))
        kernels = fusion_kernel.compiled()
        anchor_kernel = kernels[2]

        def spy(*args):
            captured.append(args)
            return anchor_kernel(*args)

        original = fusion_kernel.compiled
        fusion_kernel.compiled = lambda: (kernels[0], kernels[1], spy)
        try:
            rng = np.random.default_rng(0)
            popular = np.argsort(-signals.popularity.counts)[:2000]
            flt = Filter(must_match={"in_stock": True})
            for i in rng.choice(popular, size=requests):
                pipe.retriever.retrieve(RetrievalRequest(anchors=(signals.vocab.ids[i],), filter=flt, k=40))
        finally:
            fusion_kernel.compiled = original
        store.close()
    shared: dict[int, np.ndarray] = {}

    def encode(value):
        if isinstance(value, np.ndarray) and value.nbytes > BIG:
            shared.setdefault(id(value), value)
            return ("shared", id(value))
        return value

    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        pickle.dump({"products": len(ds.products), "shared": shared,
                     "calls": [tuple(encode(v) for v in args) for args in captured]}, f, protocol=5)
    console.print(f"captured {len(captured)} requests' arguments -> {out}")


def load(path: Path) -> tuple[int, list[tuple]]:
    with path.open("rb") as f:
        doc = pickle.load(f)
    shared = doc["shared"]
    decode = (lambda v: shared[v[1]] if isinstance(v, tuple) and len(v) == 2 and v[0] == "shared" else v)
    return doc["products"], [tuple(decode(v) for v in args) for args in doc["calls"]]


def small_request(args: tuple, rows: int = 2000) -> tuple:
    """A request of the same argument types over the first `rows` table rows (codes folded into a 500 x 500
    category block), so calling it runs the same machine code on little data."""
    small = list(args)
    table = np.ascontiguousarray(args[AT["rows"]][:rows])
    small[AT["rows"]], small[AT["row_ints"]] = table, table.view(np.int32)
    ints = small[AT["row_ints"]]
    indptr, indices, data = (args[AT[name]] for name in ("pair_indptr", "pair_indices", "pair_data"))
    codes = len(indptr) - 1
    if codes:
        block = min(500, codes)
        pairs = sp.csr_matrix((data, indices, indptr), shape=(codes, codes))[:block, :block]
        pairs.sort_indices()
        small[AT["pair_indptr"]] = pairs.indptr.astype(indptr.dtype)
        small[AT["pair_indices"]] = pairs.indices.astype(indices.dtype)
        small[AT["pair_data"]] = pairs.data.astype(data.dtype)
        ints[:, args[AT["code_col"]]] %= block
    ints[:, args[AT["leaf_col"]]] %= 500
    indptr = args[AT["cooc_indptr"]][:rows + 1].copy()
    small[AT["cooc_indptr"]] = indptr
    small[AT["cooc_indices"]] = np.minimum(args[AT["cooc_indices"]][:indptr[-1]], rows - 1)
    small[AT["cooc_data"]] = args[AT["cooc_data"]][:indptr[-1]].copy()
    small[AT["norms"]] = args[AT["norms"]][:rows].copy()
    small[AT["stock"]] = args[AT["stock"]][:rows].copy()
    small[AT["key_rows"]] = np.arange(rows, dtype=args[AT["key_rows"]].dtype)
    small[AT["keys"]] = np.arange(80, dtype=np.int64) * 7 % rows
    small[AT["covered"]] = rows
    small[AT["anchor_rows"]] = np.array([5], dtype=np.int64)
    return tuple(small)


def replay(path: Path, rounds: int) -> dict:
    products, calls = load(path)
    kernel = fusion_kernel.compiled()[2]
    small = small_request(calls[0])
    for args in calls[:3]:
        kernel(*args)
    kernel(*small)
    sweep = np.ones((SWEEP_MB << 20) // 8)
    times: dict[str, list[float]] = {"warm": [], "cold": [], "code_warmed": [], "small_request_cold": []}

    def timed(args: tuple, into: str) -> None:
        t = time.perf_counter()
        kernel(*args)
        times[into].append(time.perf_counter() - t)

    for _ in range(rounds):
        for n, args in enumerate(calls):
            for state in (("cold", "code_warmed") if n % 2 else ("code_warmed", "cold")):
                sweep += 1.0
                if state == "code_warmed":
                    kernel(*small)
                timed(args, state)
            kernel(*args)
            timed(args, "warm")
            sweep += 1.0
            timed(small, "small_request_cold")
    result = {"machine": platform.machine(), "cpu": cpu_model(), "products": products, "requests": len(calls),
              "rounds": rounds, "sweep_mb": SWEEP_MB, **percentiles_us(times)}
    return result


def compare(path: Path, against: Path, rounds: int) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("fusion_kernel_against", against)
    other = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = other  # dataclasses look their module up
    spec.loader.exec_module(other)
    products, calls = load(path)
    kernels = {"against": other.compiled()[2], "current": fusion_kernel.compiled()[2]}
    for args in calls:
        got, want = kernels["current"](*args), kernels["against"](*args)
        if not all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(got, want)):
            raise SystemExit("the two kernels return different results on a captured request")
    sweep = np.ones((SWEEP_MB << 20) // 8)
    times: dict[str, list[float]] = {f"{name}_{state}": [] for name in kernels for state in ("cold", "warm")}
    for _ in range(rounds):
        for n, args in enumerate(calls):
            for name in (("against", "current") if n % 2 else ("current", "against")):
                sweep += 1.0
                for state in ("cold", "warm"):
                    t = time.perf_counter()
                    kernels[name](*args)
                    times[f"{name}_{state}"].append(time.perf_counter() - t)
    paired = np.array(times["current_cold"]) - np.array(times["against_cold"])
    result = {"machine": platform.machine(), "cpu": cpu_model(), "products": products, "requests": len(calls),
              "rounds": rounds, "sweep_mb": SWEEP_MB, "against": str(against),
              "paired_cold_difference_p50_us": float(np.median(paired) * 1e6),
              "current_faster_share": float((paired < 0).mean()), **percentiles_us(times)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("capture", "replay", "compare"))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_CAPTURE, help="the captured arguments' pickle")
    parser.add_argument("--against", type=Path, help="compare: another fusion_kernel.py to time beside this one")
    args = parser.parse_args()
    if args.mode == "capture":
        capture(args.requests, args.out)
        return
    if args.mode == "compare":
        if args.against is None:
            parser.error("compare needs --against FILE")
        result = compare(args.out, args.against, args.rounds)
        write_json(Path(__file__).parent / "results" / "kernel_replay_compare.json", result)
        console.print_json(json.dumps(result))
        return
    result = replay(args.out, args.rounds)
    write_json(Path(__file__).parent / "results" / "kernel_replay.json", result)
    console.print_json(json.dumps(result))


if __name__ == "__main__":
    main()
