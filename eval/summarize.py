"""Collect eval/results/*/metrics.json into eval/results/SUMMARY.md (one table per task and dataset)."""

import json
from pathlib import Path

from rag_rec.eval.harness import HEADLINE

ROOT = Path(__file__).resolve().parent / "results"


def main() -> None:
    lines = ["# Evaluation results", "", "Produced by `eval/run_all.sh` and `eval/run_llm.sh`; each row links to its "
             "run's folder (metrics.json holds the exact command line).", ""]
    docs = []
    for path in sorted(ROOT.glob("*/metrics.json")):
        docs.append((path.parent.name, json.loads(path.read_text())))
    for task in HEADLINE:
        runs = [(name, d) for name, d in docs if d["task"] == task]
        if not runs:
            continue
        keys = [k for k in HEADLINE[task] if any(k in r["metrics"] for _, d in runs for r in d["results"].values())]
        lines += [f"## {task}", "", "| run | recommender | " + " | ".join(keys) + " | cases |",
                  "|---" * (len(keys) + 3) + "|"]
        for name, d in runs:
            for rec, r in d["results"].items():
                cells = ["" if r["metrics"].get(k) is None else f"{r['metrics'][k]:.3f}" for k in keys]
                lines.append(f"| [{name}]({name}/report.md) | {rec} | " + " | ".join(cells) + f" | {r['n_cases']} |")
        lines.append("")
    (ROOT / "SUMMARY.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
