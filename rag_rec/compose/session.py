"""Session bundling (the AICL task) without an LLM: group a session's items by similarity, name each group.

Bundlers: whole-session (one bundle), category (shared category path), embedding (text similarity),
cf-embedding (text similarity + co-occurrence + category), llm (rag_rec.compose.llm_session). Thresholds are
tuned on the training sessions only.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

from rag_rec.data.models import Dataset, Product, Session
from rag_rec.eval import metrics as M
from rag_rec.eval.recommenders import PredictedBundle, SessionBundler
from rag_rec.settings import Settings

_STOP = {"for", "and", "with", "the", "of", "to", "in", "a", "an", "&", "-", "by", "on", "new", "pack", "black",
         "white", "inch", "x", "w", "+", "/", "|", "compatible", "set", "kit", "pcs", "piece"}


_WORD = re.compile(r"[^\W\d_][\w']+")  # a word in any script that starts with a letter


def name_group(products: Sequence[Product]) -> str:
    """A short intent for a group: the deepest category shared by most items, else the commonest title words."""
    paths = [p.category for p in products if p.category]
    if len(paths) >= max(2, len(products) // 2 + 1):
        depth_terms: Counter = Counter()
        for path in paths:
            for depth, term in enumerate(path[1:], start=1):
                depth_terms[(depth, term)] += 1
        shared = [(d, t) for (d, t), n in depth_terms.items() if n >= max(2, (len(paths) + 1) // 2)]
        if shared:
            depth, term = max(shared)
            return f"{term} essentials" if depth >= 2 else f"{term} bundle"
    words: Counter = Counter()
    shown: dict[str, str] = {}
    for p in products:
        seen = set()
        for w in _WORD.findall(p.title):
            lw = w.casefold()
            if lw not in _STOP and len(lw) > 2 and lw not in seen:
                seen.add(lw)
                words[lw] += 1
                shown.setdefault(lw, w if w[:1].isupper() else w[:1].upper() + w[1:])  # USB stays USB
    common = [w for w, n in words.most_common(3) if n >= 2] or [w for w, _ in words.most_common(2)]
    return " ".join(shown[w] for w in common[:2]) + " set" if common else "Bundle"


def category_similarity(a: Product, b: Product) -> float:
    if not a.category or not b.category:
        return 0.0
    shared = 0
    for x, y in zip(a.category, b.category):
        if x != y:
            break
        shared += 1
    return shared / max(len(a.category), len(b.category))


def average_linkage_groups(sim: np.ndarray, threshold: float) -> list[list[int]]:
    """Agglomerative clustering (average linkage) until no pair of clusters is more similar than threshold."""
    clusters = [[i] for i in range(len(sim))]
    while len(clusters) > 1:
        best, pair = -np.inf, None
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                s = float(sim[np.ix_(clusters[a], clusters[b])].mean())
                if s > best:
                    best, pair = s, (a, b)
        if best < threshold or pair is None:
            break
        a, b = pair
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    return clusters


class SimilarityBundler:
    """Groups session items whose combined similarity passes a threshold tuned on the training sessions."""

    def __init__(self, name: str, settings: Settings, *, text_weight: float, category_weight: float,
                 cooc_weight: float, whole_session: bool = False):
        self.name, self.settings = name, settings
        self.text_weight, self.category_weight, self.cooc_weight = text_weight, category_weight, cooc_weight
        self.whole_session = whole_session
        self.threshold = 0.5
        self._encoder = None
        self._cooc = None

    def _encoder_or_none(self):
        if self.text_weight and self._encoder is None:
            from rag_rec.signals.text import SentenceTransformerEncoder

            self._encoder = SentenceTransformerEncoder(self.settings.embedding)
        return self._encoder

    def similarity(self, items: Sequence[str], dataset: Dataset, vectors: dict[str, np.ndarray] | None = None
                   ) -> np.ndarray:
        n = len(items)
        sim = np.zeros((n, n))
        weight = 0.0
        if self.text_weight:
            mat = np.stack([vectors[i] for i in items])
            sim += self.text_weight * (mat @ mat.T)
            weight += self.text_weight
        if self.category_weight:
            prods = [dataset.products[i] for i in items]
            cat = np.array([[category_similarity(a, b) for b in prods] for a in prods])
            sim += self.category_weight * cat
            weight += self.category_weight
        if self.cooc_weight and self._cooc is not None:
            idx = [self._cooc.vocab.index.get(i) for i in items]
            co = np.zeros((n, n))
            for a in range(n):
                for b in range(n):
                    if a != b and idx[a] is not None and idx[b] is not None:
                        co[a, b] = min(1.0, self._cooc.cooc[idx[a], idx[b]])
            sim += self.cooc_weight * co
            weight += self.cooc_weight
        return sim / weight if weight else sim

    def _vectors(self, sessions: Sequence[Session], dataset: Dataset) -> dict[str, np.ndarray]:
        encoder = self._encoder_or_none()
        if encoder is None:
            return {}
        ids = sorted({i for s in sessions for i in s.items})
        mat = encoder.encode([dataset.products[i].text() for i in ids])
        return dict(zip(ids, mat))

    def _predict(self, session: Session, dataset: Dataset, vectors, threshold: float) -> list[PredictedBundle]:
        items = list(session.items)
        if self.whole_session or len(items) == 2 and not (self.text_weight or self.category_weight):
            groups = [list(range(len(items)))]
        else:
            groups = average_linkage_groups(self.similarity(items, dataset, vectors), threshold)
        out = []
        for g in groups:
            if len(g) >= 2:
                members = tuple(items[i] for i in g)
                out.append(PredictedBundle(members, name_group([dataset.products[i] for i in members])))
        return out

    def fit(self, train: Dataset) -> "SessionBundler":
        if self.whole_session:
            return self
        truth = train.bundles_of_session()
        labelled = [s for sid, s in train.sessions.items() if sid in truth]
        sessions = labelled[:300]
        if self.cooc_weight:
            from dataclasses import replace

            from rag_rec.signals.cooc import CooccurrenceScorer

            held = {s.id for s in sessions}  # tune on sessions the co-occurrence graph has not seen
            rest = replace(train, sessions={k: v for k, v in train.sessions.items() if k not in held},
                           bundles=[b for b in train.bundles if b.session_id not in held])
            self._cooc = CooccurrenceScorer(alpha=0.5).fit(rest)
        vectors = self._vectors(sessions, train)
        best = (-1.0, self.threshold)
        for threshold in np.arange(0.2, 0.95, 0.05) if sessions else ():  # nothing labelled: the default stays
            f = []
            for s in sessions:
                preds = [p.items for p in self._predict(s, train, vectors, threshold)]
                p, r, _ = M.one_to_one_scores(preds, [b.items for b in truth[s.id]])
                f.append(2 * p * r / (p + r) if p + r else 0.0)
            best = max(best, (float(np.mean(f)), float(threshold)))
        self.threshold = round(best[1], 2)
        if self.cooc_weight:
            from rag_rec.signals.cooc import CooccurrenceScorer

            self._cooc = CooccurrenceScorer(alpha=0.5).fit(train)
        return self

    def bundle_sessions(self, sessions: Sequence[Session], dataset: Dataset) -> list[list[PredictedBundle]]:
        vectors = self._vectors(sessions, dataset)
        return [self._predict(s, dataset, vectors, self.threshold) for s in sessions]


def make_bundler(name: str, settings: Settings) -> SessionBundler:
    if name == "whole-session":
        return SimilarityBundler(name, settings, text_weight=0, category_weight=0, cooc_weight=0, whole_session=True)
    if name == "category":
        return SimilarityBundler(name, settings, text_weight=0, category_weight=1, cooc_weight=0)
    if name == "embedding":
        return SimilarityBundler(name, settings, text_weight=1, category_weight=0, cooc_weight=0)
    if name == "cf-embedding":
        return SimilarityBundler(name, settings, text_weight=1, category_weight=0.5, cooc_weight=0.3)
    if name in ("llm", "llm-name"):
        from rag_rec.compose.llm_session import LLMSessionBundler

        return LLMSessionBundler(settings, mode="partition" if name == "llm" else "name")
    raise ValueError(f"unknown session bundler {name!r}")
