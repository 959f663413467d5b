"""Runs recommenders over a task and writes metrics.json, report.md and PNG plots."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from rag_rec.errors import UsageError
from rag_rec.data import load_dataset
from rag_rec.eval import tasks as T
from rag_rec.eval.recommenders import BUNDLERS, RANKERS
from rag_rec.settings import Settings

TASKS = ("session_bundling", "bundle_completion", "basket_completion")
DEFAULT_RECOMMENDERS = {
    "session_bundling": ["whole-session", "category", "embedding", "cf-embedding"],
    "bundle_completion": ["pop", "itemknn", "als"],
    "basket_completion": ["pop", "itemknn", "als"],
}
HEADLINE = {
    "session_bundling": ["precision", "recall", "coverage", "precision_1to1", "recall_1to1", "coverage_1to1",
                         "exact_match", "jaccard", "valid", "hallucinated_item_rate", "duplicate_rate",
                         "intent_rouge1", "intent_rougeL", "intent_embedding_sim", "judge_naturalness",
                         "judge_coverage", "judge_motivation", "judge_faithful"],
    "bundle_completion": ["recall@10", "ndcg@10", "recall@20", "mrr", "auc"],
    "basket_completion": ["hr@10", "ndcg@10", "hr@20", "mrr", "auc"],
}


def _json_safe(value):
    """NaN and infinities as null: metrics.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def run_eval(task: str, data: str, recommenders: Sequence[str] | None, out: str | Path, *,
             limit: int | None = None, settings: Settings | None = None, seed: int = 0,
             console: Console | None = None, command: str | None = None, judge: bool = False) -> dict:
    """Score each recommender on `task` over the data spec; write results under `out`; return the metrics doc."""
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; expected one of {TASKS}")
    settings = settings or Settings()
    console = console or Console(stderr=True)
    names = list(recommenders or DEFAULT_RECOMMENDERS[task])
    registry = BUNDLERS if task == "session_bundling" else RANKERS
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UsageError(f"unknown recommender(s) {unknown} for {task}; choose from {sorted(registry)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dataset = load_dataset(data, strict=settings.data.strict)
    console.log(f"loaded {dataset.name}: {dataset.stats()}")
    results: list[T.TaskResult] = []
    if task == "session_bundling":
        intent_scorer = None
        try:
            from rag_rec.signals.text import SentenceTransformerEncoder

            intent_scorer = T.intent_similarity_scorer(SentenceTransformerEncoder(settings.embedding))
        except ImportError as exc:
            console.log(f"intent embedding similarity skipped: {exc}")
        llm_judge = None
        if judge:
            from rag_rec.eval.judge import LLMJudge
            from rag_rec.llm import make_llm

            judge_settings = settings.llm.model_copy(update={"model": settings.llm.judge_model or settings.llm.model})

            def llm_judge():
                return LLMJudge(make_llm(judge_settings))
        for name in names:
            results.append(T.run_session_bundling(dataset, registry[name](settings), limit=limit,
                                                  intent_scorer=intent_scorer, judge=llm_judge))
            console.log(f"{name}: " + _fmt(results[-1].metrics, HEADLINE[task]))
    else:
        split = T.bundle_completion_split if task == "bundle_completion" else T.basket_completion_split
        if task == "bundle_completion":
            train, cases = split(dataset, seed=seed)
            cases = cases[: limit or None]
        else:
            train, cases = split(dataset, max_cases=limit or 1000, seed=seed)
        console.log(f"{len(cases)} test cases, {len(train.products)} catalogue items")
        for name in names:
            results.append(T.run_ranking(task, train, cases, registry[name](settings)))
            console.log(f"{name}: " + _fmt(results[-1].metrics, HEADLINE[task]))
    doc = {
        "task": task,
        "data": data,
        "dataset": dataset.name,
        "dataset_stats": dataset.stats(),
        "limit": limit,
        "seed": seed,
        "command": command,
        "python": platform.python_version(),
        "seconds": time.perf_counter() - t0,
        "results": {r.recommender: {"metrics": r.metrics, "n_cases": r.n_cases, "seconds": r.seconds}
                    for r in results},
        "examples": {r.recommender: r.examples for r in results if r.examples},
        "cleaning": dataset.report.to_dict() if dataset.report else None,
    }
    if doc["cleaning"] and len(doc["cleaning"]["quarantined"]) > 50:
        doc["cleaning"]["quarantined"] = doc["cleaning"]["quarantined"][:50]
    (out / "metrics.json").write_text(json.dumps(_json_safe(doc), indent=2, default=str, allow_nan=False))
    write_report(doc, out)
    _print_table(doc, console)
    return doc


def _fmt(metrics: dict, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={metrics[k]:.3f}" for k in keys if k in metrics)


def _print_table(doc: dict, console: Console) -> None:
    table = Table(title=f"{doc['task']} on {doc['dataset']}")
    keys = [k for k in HEADLINE[doc["task"]] if any(k in r["metrics"] for r in doc["results"].values())]
    table.add_column("recommender")
    for k in keys:
        table.add_column(k, justify="right")
    for name, r in doc["results"].items():
        table.add_row(name, *[f"{r['metrics'].get(k, float('nan')):.3f}" for k in keys])
    console.print(table)


def write_report(doc: dict, out: Path) -> Path:
    """report.md with a metrics table, a bar chart (metrics.png) and examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in HEADLINE[doc["task"]] if any(k in r["metrics"] for r in doc["results"].values())]
    names = list(doc["results"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * max(1, len(names)) / 2), 4))
    width = 0.8 / max(len(names), 1)
    for n, name in enumerate(names):
        values = [doc["results"][name]["metrics"].get(k, 0.0) for k in keys]
        ax.bar([i + n * width for i in range(len(keys))], values, width, label=name)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(keys))], keys, rotation=30, ha="right")
    ax.set_title(f"{doc['task']} — {doc['dataset']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    lines = [f"# {doc['task']} on {doc['dataset']}", "",
             f"Data: `{doc['data']}` — {doc['dataset_stats']}", ""]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`", ""]
    lines += ["| " + " | ".join(["recommender", *keys, "cases"]) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, r in doc["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{r['metrics'].get(k, float('nan')):.4f}" for k in keys)
                     + f" | {r['n_cases']} |")
    lines += ["", "![metrics](metrics.png)", ""]
    for name, examples in doc.get("examples", {}).items():
        lines += [f"## Examples: {name}", ""]
        for ex in examples[:3]:
            lines.append(f"- session {ex['session']}: truth {ex['truth']} / predicted {ex['predicted']}")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
