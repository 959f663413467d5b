"""Full-catalogue rankers for the harness: the same sources and fusion as the online retriever, in numpy."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rag_rec.data.models import Dataset
from rag_rec.settings import Settings


def mean_vector(matrix: np.ndarray, rows: Sequence[int]) -> np.ndarray | None:
    if not rows:
        return None
    v = matrix[list(rows)].mean(axis=0)
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else None


class TextRanker:
    """Cosine similarity between the anchors' mean text embedding and every product."""

    name = "text"

    def __init__(self, settings: Settings):
        self.settings = settings

    def fit(self, train: Dataset) -> "TextRanker":
        from rag_rec.signals.suite import fit_signals

        self.signals = fit_signals(train, self.settings, als=False)
        self.vocab = self.signals.vocab
        return self

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray:
        pop = self.signals.popularity.counts
        scores = 1e-6 * pop / max(pop.max(), 1.0)
        q = mean_vector(self.signals.text_vectors, self.vocab.known(anchors))
        if q is not None:
            scores = scores + self.signals.text_vectors @ q
        scores[self.vocab.known(anchors)] = -np.inf
        return scores


class LexicalRanker:
    """TF-IDF cosine between the anchors' titles/brands and every product's (the lexical signal alone)."""

    name = "lexical"

    def __init__(self, settings: Settings):
        self.settings = settings

    def fit(self, train: Dataset) -> "LexicalRanker":
        from rag_rec.signals.cooc import ItemVocab, PopularityScorer
        from rag_rec.signals.lexical import LexicalSimilarity

        self.vocab = ItemVocab.of(train.products)
        self.lexical = LexicalSimilarity().fit(train, self.vocab)
        self._pop = PopularityScorer().fit(train).counts
        return self

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray:
        scores = self.lexical.score_vector(anchors) + 1e-6 * self._pop / max(self._pop.max(), 1.0)
        scores[self.vocab.known(anchors)] = -np.inf
        return scores


class HybridRanker:
    """The online retriever's explained weighted fusion, scored over the whole catalogue."""

    name = "hybrid"

    def __init__(self, settings: Settings, *, behaviour: bool = False):
        self.settings, self.use_behaviour = settings, behaviour

    def fit(self, train: Dataset) -> "HybridRanker":
        from rag_rec.signals.suite import fit_signals

        return self.using(fit_signals(train, self.settings, behaviour=self.use_behaviour))

    def using(self, signals, scorer=None) -> "HybridRanker":
        """Rank with signals fitted elsewhere (a running pipeline's), sharing its FusionScorer when given."""
        from rag_rec.retrieve.hybrid import FusionScorer

        self.signals, self.vocab = signals, signals.vocab
        self.scorer = scorer or FusionScorer(signals, self.settings.retrieve.weights)
        self._pool = np.arange(len(self.vocab))
        return self

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray:
        pop = self.signals.popularity.counts
        feats = self.scorer.features(self._pool, anchors, user_id, None)
        scores = self.scorer.score(feats, len(self._pool)) + 1e-6 * pop / max(pop.max(), 1.0)
        scores[self.vocab.known(anchors)] = -np.inf
        return scores
