"""Bundle composition through the product vs bare vLLM generate on the same prompts, in one run.

Contexts come from the real pipeline (electronic catalogue, hybrid retrieval for N anchors). The product path is
LLMComposer.compose_many (prompt build, structured generation, grounding, one repair batch, fallback); the bare
path sends the identical messages and sampling params straight to the same engine's `vllm.LLM.chat`. The
prefix cache is reset before each timed run; the order alternates over repeats. Writes
bench/results/compose.json.

    .venv/bin/python bench/bench_compose.py [--requests 16] [--repeats 2] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rag_rec.settings import Settings

import provenance

console = Console(width=120)


def summarise(runs: dict[str, list[dict]], requests: int) -> dict:
    """Each side's fastest run, and every figure of a side from that same run (tokens, bundles, paths)."""
    bare = min(runs["bare"], key=lambda r: r["seconds"])
    prod = min(runs["product"], key=lambda r: r["seconds"])
    out = {"bare_requests_per_s": requests / bare["seconds"], "product_requests_per_s": requests / prod["seconds"],
           "product_bundles_per_s": prod["bundles"] / prod["seconds"],
           "bare_tokens_per_s": bare["completion_tokens"] / bare["seconds"],
           "ratio_product_over_bare": bare["seconds"] / prod["seconds"], "product_paths": prod["paths"]}
    if "completion_tokens" in prod:
        out["product_tokens_per_s"] = prod["completion_tokens"] / prod["seconds"]
        out["tokens_ratio_product_over_bare"] = out["product_tokens_per_s"] / out["bare_tokens_per_s"]
    return out


def main() -> None:
    run = provenance.header()
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "compose.json"))
    args = parser.parse_args()

    from rag_rec.compose.llm_composer import LLMComposer
    from rag_rec.llm.vllm_engine import VLLMEngine
    from rag_rec.pipeline import BundlePipeline
    from rag_rec.schemas import BundleRequest

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(index={"path": tmp}, llm={"backend": "none", "model": args.model})
        pipeline = BundlePipeline.from_settings(settings)
        anchors = [b.items[0] for b in pipeline.dataset.bundles[: args.requests * 3: 3]]
        contexts = [pipeline.context_for(BundleRequest(anchor_items=[a], k=2))[0] for a in anchors]
        pipeline.close()
    llm_settings = settings.llm.model_copy(update={"backend": "vllm"})
    t0 = time.perf_counter()
    engine = VLLMEngine(llm_settings)
    startup = time.perf_counter() - t0
    composer = LLMComposer(engine, llm_settings)
    requests = [composer.build_request(c)[0] for c in contexts]

    def bare():
        outs = engine.llm.chat([list(r.messages) for r in requests], [engine.sampling_params(r) for r in requests],
                               use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs), len(requests)

    generated = {"tokens": 0}
    generate = engine.generate

    def counting(batch, *args, **kwargs):  # the product's completion tokens, first answers and repairs
        out = generate(batch, *args, **kwargs)
        generated["tokens"] += sum(g.completion_tokens for g in out)
        return out

    engine.generate = counting

    def product():
        generated["tokens"] = 0
        results = composer.compose_many(contexts)
        paths = [r.produced_by for r in results]
        return sum(len(r.bundles) for r in results), paths, generated["tokens"]

    runs: dict[str, list[dict]] = {"bare": [], "product": []}
    for rep in range(args.repeats):
        order = ("bare", "product") if rep % 2 == 0 else ("product", "bare")
        for name in order:
            engine.llm.reset_prefix_cache()
            t = time.perf_counter()
            if name == "bare":
                tokens, n = bare()
                runs[name].append({"seconds": time.perf_counter() - t, "completion_tokens": tokens, "requests": n})
            else:
                bundles, paths, tokens = product()
                runs[name].append({"seconds": time.perf_counter() - t, "bundles": bundles, "requests": len(paths),
                                   "completion_tokens": tokens, "paths": {p: paths.count(p) for p in set(paths)}})
    engine.close()
    result = {"model": args.model, "requests": len(contexts), "engine_startup_s": round(startup, 1),
              **summarise(runs, len(contexts)), "runs": runs,
              "note": "product time includes grounding and the repair batch for rejected answers (same engine); "
                      "each side's figures come from its fastest run",
              "provenance": provenance.finish(run)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    table = Table(title=f"composition, {len(contexts)} requests, {args.model}")
    for col in ("path", "requests/s", "bundles/s", "tokens/s"):
        table.add_column(col, justify="right")
    table.add_row("bare vLLM chat", f"{result['bare_requests_per_s']:.2f}", "", f"{result['bare_tokens_per_s']:.0f}")
    table.add_row("product compose", f"{result['product_requests_per_s']:.2f}", f"{result['product_bundles_per_s']:.2f}", "")
    console.print(table)
    console.print(f"ratio product/bare: {result['ratio_product_over_bare']:.2f}")


if __name__ == "__main__":
    main()
