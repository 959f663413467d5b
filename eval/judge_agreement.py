"""Agreement of the LLM judge with the hand-labelled sample (eval/judge_labels.jsonl).

usage: python eval/judge_agreement.py [MODEL] -> eval/results/judge_agreement-MODEL.json
"""

import json
import sys
from pathlib import Path

from rag_rec.eval.harness import _json_safe
from rag_rec.eval.judge import LLMJudge, agreement, load_labels
from rag_rec.llm import make_llm
from rag_rec.settings import Settings

if __name__ == "__main__":
    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    root = Path(__file__).resolve().parent
    rows = load_labels(root / "judge_labels.jsonl")
    llm = make_llm(Settings().llm.model_copy(update={"model": model}))
    try:
        judge = LLMJudge(llm)
        judgements = judge.judge_many([case for case, _ in rows])
    finally:
        llm.close()
    result = {"model": model, "prompt": judge.template.id, "labels": str(root / "judge_labels.jsonl"),
              "sample_size": len(rows),
              **agreement(judgements, [lab for _, lab in rows]),
              "judgements": [j.model_dump() if j else None for j in judgements]}
    out = root / "results" / f"judge_agreement-{model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False))  # an undefined kappa is null
    print(json.dumps({k: v for k, v in result.items() if k != "judgements"}, indent=2))
