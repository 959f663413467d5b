"""LLM judge with AICL's rubric (naturalness 1-3, coverage 1-3, motivation 1-2) plus faithfulness, and its
agreement with hand labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from rag_rec.compose.grounding import parse_json_object
from rag_rec.compose.llm_composer import _clean
from rag_rec.compose.prompts import load_prompt
from rag_rec.errors import LLMOutputError
from rag_rec.llm.base import GenerationRequest
from rag_rec.schemas import LLMJudgement

# v2: a critique first (the scores are generated after it), hallucination as a word ("none"/"found"): the
# boolean of v1 was answered `false` for everything by the small judges.
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"critique": {"type": "string", "minLength": 10, "maxLength": 240},
                   "naturalness": {"type": "integer", "enum": [1, 2, 3]},
                   "coverage": {"type": "integer", "enum": [1, 2, 3]},
                   "motivation": {"type": "integer", "enum": [1, 2]},
                   "hallucination": {"type": "string", "enum": ["none", "found"]}},
    "required": ["critique", "naturalness", "coverage", "motivation", "hallucination"],
    "additionalProperties": False,
}
DIMENSIONS = ("naturalness", "coverage", "motivation", "faithful")


def parse_judgement(text: str) -> LLMJudgement:
    doc = parse_json_object(text)
    if "hallucination" in doc:
        value = doc.pop("hallucination")
        said = value.strip().lower() if isinstance(value, str) else None  # JSON null is no verdict
        if said not in ("none", "found"):
            raise LLMOutputError(f"hallucination must be 'none' or 'found', got {str(value)[:20]!r}")
        doc["faithful"] = said == "none"
    return LLMJudgement.model_validate(doc)


@dataclass(frozen=True)
class JudgeCase:
    titles: tuple[str, ...]
    explanation: str


class LLMJudge:
    def __init__(self, llm, *, max_tokens: int = 160):
        self.llm, self.max_tokens = llm, max_tokens
        self.template = load_prompt("judge")

    def judge_many(self, cases: Sequence[JudgeCase]) -> list[LLMJudgement | None]:
        requests = [GenerationRequest(self.template.render(
            items="\n".join(f"- {_clean(t, 120)}" for t in c.titles), intent=_clean(c.explanation, 300)),
            JUDGE_SCHEMA, self.max_tokens, 0.0) for c in cases]
        out: list[LLMJudgement | None] = []
        for gen in self.llm.generate(requests) if requests else []:
            try:
                out.append(parse_judgement(gen.text))
            except (LLMOutputError, ValidationError):
                out.append(None)
        return out


def summarize_judgements(judgements: Sequence[LLMJudgement | None]) -> dict[str, float]:
    valid = [j for j in judgements if j is not None]
    if not judgements:
        return {"judged": 0.0}  # nothing to judge is not "every answer invalid"
    if not valid:
        return {"judge_valid": 0.0, "judged": float(len(judgements))}
    return {
        "judge_naturalness": float(np.mean([j.naturalness for j in valid])),
        "judge_coverage": float(np.mean([j.coverage for j in valid])),
        "judge_motivation": float(np.mean([j.motivation for j in valid])),
        "judge_faithful": float(np.mean([j.faithful for j in valid])),
        "judge_valid": len(valid) / len(judgements),
        "judged": len(judgements),
    }


def load_labels(path: str | Path) -> list[tuple[JudgeCase, dict]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            rows.append((JudgeCase(tuple(doc["titles"]), doc["explanation"]), doc["labels"]))
    return rows


def agreement(judgements: Sequence[LLMJudgement | None], labels: Sequence[dict]) -> dict[str, float]:
    """Per dimension: exact agreement and Cohen's kappa between the judge and the hand labels."""
    out: dict[str, float] = {"n": float(len(labels)),
                             "judge_valid": sum(j is not None for j in judgements) / max(len(labels), 1)}
    for dim in DIMENSIONS:
        pairs = [(getattr(j, dim), lab[dim]) for j, lab in zip(judgements, labels) if j is not None]
        out[f"{dim}_n"] = float(len(pairs))
        if not pairs:
            continue
        a = np.array([int(x) for x, _ in pairs])
        b = np.array([int(y) for _, y in pairs])
        po = float(np.mean(a == b))
        cats = sorted(set(a) | set(b))
        pe = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in cats)
        out[f"{dim}_exact"] = po
        out[f"{dim}_kappa"] = (po - pe) / (1 - pe) if pe < 1 else float("nan")  # undefined: both raters constant
    return out
