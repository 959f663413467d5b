"""Session bundling with the LLM (the AICL task), improved with our signals:
- a pre-grouping from text similarity + co-occurrence + category (tuned on training sessions) is given as a hint;
- demonstrations are the most similar training sessions by embedding, with their crowd bundles and intents;
- the JSON schema only allows the session's own item keys; output is validated and, if unusable, replaced by
  the pre-grouping (named by the heuristic), so every session gets a valid answer.
Mode "partition": the LLM decides the groups. Mode "name": groups come from the pre-grouping, the LLM names them.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from rag_rec.compose.grounding import _leaks, keyed, parse_json_object, placeholder, plain_text
from rag_rec.compose.llm_composer import _clean, prompt_tokens
from rag_rec.compose.prompts import load_prompt
from rag_rec.compose.session import SimilarityBundler, name_group
from rag_rec.data.models import Dataset, Session
from rag_rec.errors import LLMOutputError
from rag_rec.eval.recommenders import PredictedBundle
from rag_rec.llm.base import GenerationRequest, LLMUnavailable
from rag_rec.schemas import MAX_SESSION_GROUP_ITEMS, MAX_SESSION_GROUPS, LLMSessionGroups
from rag_rec.settings import Settings

log = logging.getLogger(__name__)
_SESSION_KEY = re.compile(r"\bI\d+\b")
TITLE_LENGTHS = (120, 60, 30)  # a prompt over the model's context is retried with shorter titles, then without examples


def session_schema(keys: Sequence[str], max_bundles: int) -> dict:
    return {
        "type": "object",
        "properties": {"bundles": {"type": "array", "minItems": 1, "maxItems": min(max_bundles, MAX_SESSION_GROUPS),
                                   "items": {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"type": "string", "enum": list(keys)},
                                     "minItems": 2, "maxItems": min(len(keys), MAX_SESSION_GROUP_ITEMS)},
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
        self.intents_replaced = 0  # blank, leaking or placeholder intents named by the heuristic instead

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
        self.demo_matrix = (np.stack([_session_vector(s, vectors) for s in self.demo_sessions])
                            if self.demo_sessions else None)  # no labelled session: the prompt has no examples
        return self

    def _demos(self, session: Session, vectors) -> str:
        if self.demo_matrix is None:
            return ""
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

    def _request(self, session: Session, groups: list[PredictedBundle], dataset: Dataset, vectors,
                 keys: dict[str, str]) -> GenerationRequest | None:
        """The session's prompt, with shorter titles and then without examples while it would not leave room for
        the answer in the model's context; None when even that does not fit."""
        back = {v: k for k, v in keys.items()}
        hint = "; ".join("[" + ", ".join(back[i] for i in g.items) + "]" for g in groups) or "none"
        if self.mode == "partition":
            schema = session_schema(list(keys), max(1, len(keys) // 2))
            instruction = f"\nGrouping suggested by purchase data and similarity: {hint}"
        else:
            schema = naming_schema(len(groups)) if groups else None
            instruction = f"\nName each of these groups, in order: {hint}"
        if schema is None:
            return None
        limit = self.settings.llm.max_model_len - self.settings.llm.max_tokens
        examples = self._demos(session, vectors)
        for with_examples in (True, False):
            for length in TITLE_LENGTHS:
                items = "\n".join(f"{k}: {_clean(dataset.products[i].title, length)}"
                                   + (f" [{_clean(dataset.products[i].category[-1], 40)}]"
                                      if dataset.products[i].category else "")
                                   for k, i in keys.items())
                messages = self.template.render(examples=examples if with_examples else "", items=items + instruction)
                if prompt_tokens(self._llm, messages) <= limit:
                    return GenerationRequest(messages, schema, self.settings.llm.max_tokens, 0.0,
                                             repetition_penalty=self.settings.llm.repetition_penalty)
        return None

    def bundle_sessions(self, sessions: Sequence[Session], dataset: Dataset) -> list[list[PredictedBundle]]:
        vectors = self.pregroup._vectors(sessions, dataset)
        pregroups = [self.pregroup._predict(s, dataset, vectors, self.pregroup.threshold) for s in sessions]
        requests, keymaps = [], []
        for session, groups in zip(sessions, pregroups):
            keys = keyed(session.items, "I")
            requests.append(self._request(session, groups, dataset, vectors, keys))
            keymaps.append(keys)
        todo = [n for n, r in enumerate(requests) if r is not None]
        over_budget = sum(1 for n, r in enumerate(requests) if r is None and (self.mode == "partition" or pregroups[n]))
        self.fallbacks += over_budget
        try:
            generations = self.llm.generate([requests[n] for n in todo]) if todo else []
        except (LLMUnavailable, ValueError) as exc:  # every session keeps its pre-grouping
            log.warning("session bundling: the LLM failed for %d sessions (%s); using the pre-grouping",
                        len(todo), exc)
            self.fallbacks += len(todo)
            return pregroups
        texts = dict(zip(todo, (g.text for g in generations)))
        out = []
        for n, (session, groups) in enumerate(zip(sessions, pregroups)):
            if n not in texts:
                out.append(groups)
                continue
            try:
                out.append(self._parse(texts[n], keymaps[n], groups, dataset))
                self.llm_sessions += 1
            except (LLMOutputError, ValidationError, KeyError, ValueError):
                self.fallbacks += 1
                out.append(groups)
        return out

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _intent(self, text: object, items: Sequence[str], dataset: Dataset, fallback: str | None) -> str:
        """The model's intent as one clean line, unless it is not text, blank, a placeholder, or carries links or
        prompt text: then the heuristic's name for the group."""
        intent = plain_text(_clean(text, 60)) if isinstance(text, str) else ""
        if (len(intent) < 3 or placeholder(intent) or _leaks(intent, "session_bundles")
                or _SESSION_KEY.search(intent)):  # "(I1), (I2)": the prompt's keys, not a name
            self.intents_replaced += 1
            return fallback or name_group([dataset.products[i] for i in items if i in dataset.products])
        return intent

    def _parse(self, text: str, keys: dict[str, str], groups: list[PredictedBundle],
               dataset: Dataset) -> list[PredictedBundle]:
        doc = parse_json_object(text)
        if self.mode == "name":
            intents = doc.get("intents")
            if not isinstance(intents, list) or len(intents) != len(groups):
                raise LLMOutputError("wrong number of intents")
            return [PredictedBundle(g.items, self._intent(t, g.items, dataset, g.intent)) for g, t in zip(groups, intents)]
        parsed = LLMSessionGroups.model_validate(doc)
        used: set[str] = set()
        result = []
        for b in parsed.bundles:
            items = tuple(dict.fromkeys(keys[k] for k in b.items if k in keys and keys[k] not in used))
            if len(items) >= 2:
                used.update(items)
                result.append(PredictedBundle(items, self._intent(b.intent, items, dataset, None)))
        if not result:
            raise LLMOutputError("no valid bundle in the LLM answer")
        return result


def _session_vector(session: Session, vectors) -> np.ndarray:
    v = np.mean([vectors[i] for i in session.items if i in vectors], axis=0)
    return v / (np.linalg.norm(v) or 1.0)
