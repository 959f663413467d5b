"""Write the README's result and benchmark tables from the committed JSON (between the marker comments)."""

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RES = REPO / "eval" / "results"


def metrics(run: str) -> dict:
    path = RES / run / "metrics.json"
    return json.loads(path.read_text())["results"] if path.is_file() else {}


def fmt(x) -> str:
    return "" if x is None else f"{x:.3f}"


def results_md() -> str:
    out = ["**Session bundling** (AICL task, 180 test sessions per domain; AICL's P/R/Cov, then one-to-one recall, "
           "intent ROUGE-1 and embedding similarity vs the crowd intents; reference: a public GPT-4.1 run of AICL "
           "scored 0.643 / 0.849 / 0.766 on electronic):", "",
           "| domain | recommender | P | R | Cov | R 1:1 | exact | intent R-1 | intent emb | judge nat/cov/mot/faithful | halluc. items |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for domain in ("electronic", "clothing"):
        rows = list(metrics(f"session_bundling-{domain}").items())
        for model in ("smollm2-135m", "qwen2.5-coder-0.5b"):
            rows += [(f"{name} ({model})", r) for name, r in metrics(f"session_bundling-llm-{model}-{domain}").items()]
        for name, r in rows:
            m = r["metrics"]
            judge = "/".join(fmt(m.get(k)) for k in ("judge_naturalness", "judge_coverage", "judge_motivation",
                                                       "judge_faithful")) if "judge_naturalness" in m else ""
            out.append(f"| {domain} | {name} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['coverage'])} | "
                       f"{fmt(m['recall_1to1'])} | {fmt(m['exact_match'])} | {fmt(m.get('intent_rouge1'))} | "
                       f"{fmt(m.get('intent_embedding_sim'))} | {judge} | {fmt(m['hallucinated_item_rate'])} |")
    out += ["", "**Bundle completion** (Sun et al.: hide one item of a held-out bundle, rank the whole catalogue):", "",
            "| recommender | electronic R@10 | electronic NDCG@10 | clothing R@10 | clothing NDCG@10 |",
            "|---|---|---|---|---|"]
    e, c = metrics("bundle_completion-electronic"), metrics("bundle_completion-clothing")
    for name in e:
        out.append(f"| {name} | {fmt(e[name]['metrics']['recall@10'])} | {fmt(e[name]['metrics']['ndcg@10'])} | "
                   f"{fmt(c.get(name, {}).get('metrics', {}).get('recall@10'))} | "
                   f"{fmt(c.get(name, {}).get('metrics', {}).get('ndcg@10'))} |")
    out += paired_lines(["bundle_completion-electronic", "bundle_completion-clothing"])
    out += ["", "**Basket completion** (Dunnhumby, 92k products, last basket of 1000 households, one item hidden):", "",
            "| recommender | HR@10 | NDCG@10 | HR@20 |", "|---|---|---|---|"]
    d = metrics("basket_completion-dunnhumby")
    d.update({f"{k} (pruned partners, current code)": v for k, v in metrics("basket_completion-dunnhumby-pruned").items()})
    for name, r in d.items():
        m = r["metrics"]
        out.append(f"| {name} | {fmt(m['hr@10'])} | {fmt(m['ndcg@10'])} | {fmt(m['hr@20'])} |")
    out += paired_lines(["basket_completion-dunnhumby"])
    return "\n".join(out)


SINGLE_SIGNALS = ("pop", "itemknn", "als", "text", "lexical", "behaviour")


def paired_lines(runs: list[str]) -> list[str]:
    """The hybrid against its best single signal per run, with the paired bootstrap interval and the sign test
    over the same test cases (written by the harness as `paired`)."""
    lines = []
    for run in runs:
        path = RES / run / "metrics.json"
        doc = json.loads(path.read_text()) if path.is_file() else {}
        references = {"hybrid": doc.get("paired", {}), **doc.get("paired_variants", {})}
        for reference, paired in references.items():
            singles = {n: c for n, c in paired.get("against", {}).items() if n in SINGLE_SIGNALS}
            if not singles:
                continue
            name, c = max(singles.items(), key=lambda kv: kv[1]["mean_b"])
            lo, hi = c["ratio_ci95"]
            metric = "HR@10" if run.startswith("basket") else "R@10"
            lines.append(f"- {run.split('-', 1)[1]}: {reference} / {name} (the best single signal) on {metric} = "
                         f"{c['ratio']:.2f}x, 95% paired bootstrap interval {lo:.2f}-{hi:.2f}x; {reference} has "
                         f"the target in its top 10 where {name} has not in {c['wins_a']} cases, the reverse in "
                         f"{c['wins_b']} (sign test p = {c['sign_test_p']:.2g}).")
    return ["", "Uncertainty (over the test cases, same cases for both):", "", *lines] if lines else []


def bench_md() -> str:
    out = ["| benchmark | measured | target |", "|---|---|---|"]
    idx = REPO / "bench" / "results" / "index.json"
    if idx.is_file():
        doc = json.loads(idx.read_text())
        worst = max(next(v for k, v in r["edge"][q].items() if k.startswith("best_of_"))["ratio_p95"]
                    for r in doc["results"] for q in r["edge"])
        p95 = max(r["edge"][q]["single"]["facade"]["p95_ms"] for r in doc["results"] for q in r["edge"])
        out.append(f"| index facade vs bare qdrant-edge (10k/92k) | worst p95 ratio {worst:.2f}x (best of 3), "
                   f"worst p95 {p95:.2f} ms | <= 1.2x, <= 5 ms |")
    ret = REPO / "bench" / "results" / "retrieval.json"
    if ret.is_file():
        doc = json.loads(ret.read_text())
        for r in doc["retrieval"]:
            out.append(f"| hybrid retrieval vs bare fused query, {r['products']} products | p95 {r['hybrid_p95_ms']:.2f} ms "
                       f"vs {r['bare_p95_ms']:.2f} ms ({r['p95_ratio']:.2f}x) | <= 1.2x, <= 5 ms |")
        beh = REPO / "bench" / "results" / "behaviour_serve.json"
        if beh.is_file():
            b = json.loads(beh.read_text())
            out.append(f"| hybrid retrieval with the behaviour model (`behaviour.serve`), {b['products']} products | p95 "
                       f"{b['with_behaviour_p95_ms']:.2f} ms vs {b['without_behaviour_p95_ms']:.2f} ms without it "
                       f"({b['p95_ratio']:.2f}x) | <= 5 ms |")
        ix = doc["indexing"]
        out.append(f"| indexing vs bare encoder | {ix['ratio']:.2f}x ({ix['indexing_per_s']:.0f}/s) | >= 0.9x |")
    ups = REPO / "bench" / "results" / "upsert.json"
    if ups.is_file():
        doc = json.loads(ups.read_text())
        r = max(doc["sizes"], key=lambda r: r["products"])
        cases = ", ".join(f"{name} {c['product_p50_ms']:.0f} vs {c['bare_p50_ms']:.0f} ms" for name, c in r["cases"].items())
        out.append(f"| one-product upsert vs bare encode + engine upsert, {r['products']} products (p50) | {cases}; "
                   f"a full lookup rebuild {r['full_rebuild_p50_ms']:.0f} ms | row-level (no full pass) |")
    comp = REPO / "bench" / "results" / "compose.json"
    if comp.is_file():
        doc = json.loads(comp.read_text())
        out.append(f"| composition vs bare vLLM ({doc['model']}) | {doc['ratio_product_over_bare']:.2f}x, "
                   f"{doc['product_bundles_per_s']:.2f} bundles/s | >= 0.8x |")
    arrivals = REPO / "bench" / "results" / "llm_arrivals.json"
    if arrivals.is_file():
        doc = json.loads(arrivals.read_text())
        s, ratio = doc["summary"], doc["engine_over_rounds"]
        out.append(f"| LLM latency, {doc['requests']} requests arriving {doc['mean_gap_s']} s apart: continuous batching "
                   f"vs rounds ({doc['model']}) | p50 {s['engine']['p50_s']:.1f} vs {s['rounds']['p50_s']:.1f} s, p95 "
                   f"{s['engine']['p95_s']:.1f} vs {s['rounds']['p95_s']:.1f} s ({ratio['p95_s']:.2f}x) | no target |")
    load = REPO / "bench" / "results" / "load.json"
    if load.is_file():
        doc = json.loads(load.read_text())
        slot = (doc["load"].get("compute_slot_wait_bundles_ms") or {}).get("p95")
        out.append(f"| API overhead p95 (1 client / 50 clients) | "
                   f"{doc['calibration_1_client']['api_overhead_bundles_ms']['p95']:.1f} / "
                   f"{doc['load']['api_overhead_bundles_ms']['p95']:.1f} ms"
                   + (f"; queued for a compute slot under 50 clients: p95 {slot:.0f} ms" if slot is not None else "")
                   + " | <= 15 ms |")
        out.append(f"| 50 clients x 60 s, mixed endpoints | {doc['load']['requests']} requests, "
                   f"{doc['load']['errors']} errors, {doc['load']['shed']} shed; shedding phase {doc['shed']['shed']} "
                   f"x 429/503, {doc['shed']['errors']} errors, {doc['shed']['server_errors_5xx_other_than_503']} "
                   f"other 5xx | 0 errors |")
    return "\n".join(out)


def replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    return text.replace(name.upper(), block)


def regenerated(text: str) -> str:
    return replace(replace(text, "results_tables", results_md()), "bench_table", bench_md())


if __name__ == "__main__":
    readme = REPO / "README.md"
    text = regenerated(readme.read_text())
    if "--check" in sys.argv[1:]:
        sys.exit(0 if text == readme.read_text() else "README.md's tables differ from the committed results: "
                 "run .venv/bin/python eval/readme_tables.py")
    readme.write_text(text)
    print(text[text.index("## Results"):text.index("## Configuration")])
