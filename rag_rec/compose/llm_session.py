"""Session bundling with the LLM (the AICL task), improved with our signals:
- a pre-grouping from text similarity + co-occurrence + category (tuned on training sessions) is given as a hint;
- demonstrations are the most similar training sessions by embedding, with their crowd bundles and intents;
- the JSON schema only allows the session's own item keys; output is validated and, if unusable, replaced by
  the pre-grouping (named by the heuristic), so every session gets a valid answer.
Mode "partition": the LLM decides the groups. Mode "name": groups come from the pre-grouping, the LLM names them.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from rag_rec.compose.grounding import keyed, parse_json_object
from rag_rec.compose.llm_composer import _clean
from rag_rec.compose.prompts import load_prompt
from rag_rec.compose.session import SimilarityBundler
from rag_rec.data.models import Dataset, Session
from rag_rec.errors import LLMOutputError
from rag_rec.eval.recommenders import PredictedBundle
from rag_rec.llm.base import GenerationRequest
from rag_rec.schemas import LLMSessionGroups
from rag_rec.settings import Settings


def session_schema(keys: Sequence[str], max_bundles: int) -> dict:
    return {
        "type": "object",
        "properties": {"bundles": {"type": "array", "minItems": 1, "maxItems": max_bundles, "items": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"type": "string", "enum": list(keys)},
                                     "minItems": 2, "maxItems": len(keys)},
                           "intent": {"type": "string", "minLength": 3, "maxLength": 60}},
            "required": ["items", "intent"], "additionalProperties": False}}},
        "required": ["bundles"], "additionalProperties": False,
    }


def naming_schema(n_groups: int) -> dict:
    return {"type": "object", "properties": {"intents": {
        "type": "array", "minItems": n_groups, "maxItems": n_groups, "items": {"type": "string", "minLength": 3, "maxLength": 60}}},
        "required": ["intents"], "additionalProperties": False}


class LLMSessionBundler:
    def __init__(self, settings: Settings, *, mode: str = "partition", llm=None, demonstrations: int = 2):
        self.settings, self.mode, self.demonstrations = settings, mode, demonstrations
        self.name = "llm" if mode == "partition" else "llm-name"
        self.pregroup = SimilarityBundler("cf-embedding", settings, text_weight=1, category_weight=0.5,
                                          cooc_weight=0.3)
        self._llm = llm
        self.template = load_prompt("session_bundles")
        self.fallbacks = 0
        self.llm_sessions = 0

    @property
    def llm(self):
        if self._llm is None:
            from rag_rec.llm import make_llm

            self._llm = make_llm(self.settings.llm)
        return self._llm

    def fit(self, train: Dataset) -> "LLMSessionBundler":
        self.pregroup.fit(train)
        self.train = train
        truth = train.bundles_of_session()
        self.demo_sessions = [s for sid, s in train.sessions.items() if sid in truth]
        self.demo_truth = truth
        vectors = self.pregroup._vectors(self.demo_sessions, train)
        self.demo_matrix = np.stack([_session_vector(s, vectors) for s in self.demo_sessions])
        return self

    def _demos(self, session: Session, vectors) -> str:
        q = _session_vector(session, vectors)
        sims = self.demo_matrix @ q
        blocks = []
        for j in np.argsort(-sims)[: self.demonstrations]:
            demo = self.demo_sessions[j]
            keys = keyed(demo.items, "I")
            back = {v: k for k, v in keys.items()}
            lines = [f"{k}: {_clean(self.train.products[i].title, 90)}" for k, i in keys.items()]
            answer = {"bundles": [{"items": [back[i] for i in b.items if i in back], "intent": b.intent or ""}
                                  for b in self.demo_truth[demo.id]]}
            compact = json.dumps(answer, separators=(",", ":"))  # the answers are generated compact too
            blocks.append("Example session products:\n" + "\n".join(lines) + "\nExample answer: " + compact)
        return "\n\n".join(blocks)

    def bundle_sessions(self, sessions: Sequence[Session], dataset: Dataset) -> list[list[PredictedBundle]]:
        vectors = self.pregroup._vectors(sessions, dataset)
        pregroups = [self.pregroup._predict(s, dataset, vectors, self.pregroup.threshold) for s in sessions]
        requests, keymaps = [], []
        for session, groups in zip(sessions, pregroups):
            keys = keyed(session.items, "I")
            back = {v: k for k, v in keys.items()}
            items = "\n".join(f"{k}: {_clean(dataset.products[i].title, 120)}"
                              + (f" [{_clean(dataset.products[i].category[-1], 40)}]" if dataset.products[i].category else "")
                              for k, i in keys.items())
            hint = "; ".join("[" + ", ".join(back[i] for i in g.items) + "]" for g in groups) or "none"
            if self.mode == "partition":
                user_items = items + f"\nGrouping suggested by purchase data and similarity: {hint}"
                schema = session_schema(list(keys), max(1, len(keys) // 2))
            else:
                user_items = items + f"\nName each of these groups, in order: {hint}"
                schema = naming_schema(len(groups)) if groups else None
            messages = self.template.render(examples=self._demos(session, vectors), items=user_items)
            requests.append(GenerationRequest(messages, schema, self.settings.llm.max_tokens, 0.0,
                                              repetition_penalty=self.settings.llm.repetition_penalty))
            keymaps.append(keys)
        todo = [n for n, r in enumerate(requests) if r.json_schema is not None]
        generations = self.llm.generate([requests[n] for n in todo]) if todo else []
        texts = dict(zip(todo, (g.text for g in generations)))
        out = []
        for n, (session, groups) in enumerate(zip(sessions, pregroups)):
            if n not in texts:
                out.append(groups)
                continue
            try:
                out.append(self._parse(texts[n], keymaps[n], groups))
                self.llm_sessions += 1
            except (LLMOutputError, ValidationError, KeyError, ValueError):
                self.fallbacks += 1
                out.append(groups)
        return out

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _parse(self, text: str, keys: dict[str, str], groups: list[PredictedBundle]) -> list[PredictedBundle]:
        doc = parse_json_object(text)
        if self.mode == "name":
            intents = doc.get("intents")
            if not isinstance(intents, list) or len(intents) != len(groups):
                raise LLMOutputError("wrong number of intents")
            return [PredictedBundle(g.items, _clean(str(t), 60) or g.intent) for g, t in zip(groups, intents)]
        parsed = LLMSessionGroups.model_validate(doc)
        used: set[str] = set()
        result = []
        for b in parsed.bundles:
            items = tuple(dict.fromkeys(keys[k] for k in b.items if k in keys and keys[k] not in used))
            if len(items) >= 2:
                used.update(items)
                result.append(PredictedBundle(items, _clean(b.intent, 60)))
        if not result:
            raise LLMOutputError("no valid bundle in the LLM answer")
        return result


def _session_vector(session: Session, vectors) -> np.ndarray:
    v = np.mean([vectors[i] for i in session.items if i in vectors], axis=0)
    return v / (np.linalg.norm(v) or 1.0)
