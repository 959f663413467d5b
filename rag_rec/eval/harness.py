"""Runs recommenders over a task and writes metrics.json, report.md and PNG plots."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table

from rag_rec.errors import UsageError
from rag_rec.data import load_dataset
from rag_rec.eval import metrics as M
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
                         "judge_coverage", "judge_motivation", "judge_faithful", "judge_valid", "judged"],
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
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)  # first: an unwritable folder fails before the run, not after it
    try:
        return _score_and_write(task, data, names, registry, out, limit=limit, settings=settings, seed=seed,
                                console=console, command=command, judge=judge)
    except BaseException:
        _remove_empty(out, created)
        raise


def _remove_empty(path: Path, top: Path | None) -> None:
    """Remove `path` and its parents up to `top` (the folders a failed run created), while they are empty."""
    if top is None:
        return
    while path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == top:
            return
        path = path.parent


def _score_and_write(task: str, data: str, names: list[str], registry: dict, out: Path, *, limit: int | None,
                     settings: Settings, seed: int, console: Console, command: str | None, judge: bool) -> dict:
    t0 = time.perf_counter()
    recorded_settings = run_settings(settings, judge=judge)  # the code as the run starts, not as it ends
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
        "settings": recorded_settings,
        "python": platform.python_version(),
        "seconds": time.perf_counter() - t0,
        "results": {r.recommender: {"metrics": r.metrics, "n_cases": r.n_cases, "seconds": r.seconds,
                                    **({"ci95": ranking_ci(task, r)} if task != "session_bundling" else {})}
                    for r in results},
        "examples": {r.recommender: r.examples for r in results if r.examples},
        "cleaning": dataset.report.to_dict() if dataset.report else None,
    }
    if task != "session_bundling":
        doc["paired"] = paired_against("hybrid", results)
        variants = {name: paired_against(name, results) for name in HYBRID_VARIANTS}
        if any(variants.values()):
            doc["paired_variants"] = {name: v for name, v in variants.items() if v}
        (out / "per_case.json").write_text(json.dumps(
            {"cases": [{"anchors": list(c.anchors), "target": c.target, "user_id": c.user_id} for c in cases],
             "scores": {r.recommender: {k: [row[k] for row in r.per_case] for k in r.per_case[0]}
                        for r in results}}, allow_nan=False))
    if doc["cleaning"] and len(doc["cleaning"]["quarantined"]) > 50:
        doc["cleaning"]["quarantined"] = doc["cleaning"]["quarantined"][:50]
    (out / "metrics.json").write_text(json.dumps(_json_safe(doc), indent=2, default=str, allow_nan=False))
    write_report(doc, out)
    _print_table(doc, console)
    return doc


PRIMARY = "recall@10"  # bundle completion's Recall@10 is basket completion's HR@10


def ranking_ci(task: str, result: T.TaskResult) -> dict[str, list[float]]:
    """95% bootstrap intervals (over test cases) of the task's headline ranking metrics."""
    out = {}
    for key in HEADLINE[task]:
        source = key.replace("hr@", "recall@")
        if result.per_case and source in result.per_case[0]:
            out[key] = list(M.bootstrap_ci([row[source] for row in result.per_case]))
    return out


HYBRID_VARIANTS = ("hybrid-behaviour",)  # each also compared with every other recommender when it ran


def paired_against(reference: str, results: Sequence[T.TaskResult]) -> dict:
    """The reference recommender against every other one on the same cases (Recall@10 / HR@10): ratio of
    means with its paired bootstrap interval, per-case wins and the sign test. Empty without the reference."""
    by_name = {r.recommender: r for r in results}
    if reference not in by_name:
        return {}
    ref = [row[PRIMARY] for row in by_name[reference].per_case]
    return {"reference": reference, "metric": PRIMARY,
            "against": {name: asdict(M.paired_comparison(ref, [row[PRIMARY] for row in r.per_case]))
                        for name, r in by_name.items() if name != reference}}


def run_settings(settings: Settings, *, judge: bool = False) -> dict:
    """What reproduces a run besides its command line: the resolved settings (secrets redacted), the RAG_REC_
    variables that were set, the code's commit, the prompt templates' versions, the deciding packages' versions,
    and for judged runs the judge's model and prompt version."""
    from rag_rec.compose.prompts import load_prompt, prompt_names
    from rag_rec.machine import code_version, package_versions

    resolved = settings.model_dump(mode="json")
    for section, field in (("index", "api_key"), ("llm", "api_key"), ("serve", "api_keys")):
        if resolved.get(section, {}).get(field):
            resolved[section][field] = "<redacted>"
    doc = {"resolved": resolved,
           "environment": sorted(k for k in os.environ if k.upper().startswith("RAG_REC_")),
           "code": code_version(), "prompts": [load_prompt(name).id for name in prompt_names()],
           "packages": package_versions()}
    if judge:
        doc["judge"] = {"model": settings.llm.judge_model or settings.llm.model, "prompt": load_prompt("judge").id}
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
        table.add_row(name, *[_cell(k, r["metrics"].get(k)) for k in keys])
    console.print(table)


def _cell(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"  # not measured (e.g. no valid judgement), never a zero
    return f"{value:.0f}" if key == "judged" else f"{value:.4f}"


def _plotted(value) -> float:
    return float("nan") if value is None else float(value)


def write_report(doc: dict, out: Path) -> Path:
    """report.md with a metrics table, a bar chart (metrics.png) and examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in HEADLINE[doc["task"]] if any(k in r["metrics"] for r in doc["results"].values())]
    names = list(doc["results"])
    panels = [[k for k in keys if not k.startswith("judge") and k != "judged"],
              [k for k in keys if k.startswith("judge_") and k != "judge_valid"]]  # 0-1 rates; 1-3 rubric scores
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, width_ratios=[len(p) for p in panels],
                             figsize=(max(6, 0.6 * sum(map(len, panels)) * max(1, len(names))), 4))
    width = 0.8 / max(len(names), 1)
    for ax, panel in zip(axes[0], panels):
        for n, name in enumerate(names):
            values = [_plotted(doc["results"][name]["metrics"].get(k)) for k in panel]  # missing: no bar, not 0
            ax.bar([i + n * width for i in range(len(panel))], values, width, label=name)
        ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(panel))], panel, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_title(f"{doc['task']} — {doc['dataset']}")
    if len(panels) > 1:
        axes[0][1].set_title("LLM judge (rubric scores; means over valid judgements)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    lines = [f"# {doc['task']} on {doc['dataset']}", "",
             f"Data: `{doc['data']}` — {doc['dataset_stats']}", ""]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`", ""]
    lines += ["| " + " | ".join(["recommender", *keys, "cases"]) + " |", "|---" * (len(keys) + 2) + "|"]
    for name, r in doc["results"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(k, r["metrics"].get(k)) for k in keys) + f" | {r['n_cases']} |")
    lines += ["", "![metrics](metrics.png)", ""]
    for name, examples in doc.get("examples", {}).items():
        lines += [f"## Examples: {name}", ""]
        for ex in examples[:3]:
            lines.append(f"- session {ex['session']}: truth {ex['truth']} / predicted {ex['predicted']}")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
