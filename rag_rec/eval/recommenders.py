"""Recommenders the harness can score, by name. Rankers score the whole catalogue; bundlers split sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from rag_rec.data.models import Dataset, Session
from rag_rec.settings import Settings
from rag_rec.signals.cooc import CooccurrenceScorer, ItemVocab, PopularityScorer


@runtime_checkable
class Ranker(Protocol):
    """Scores every catalogue item (vocab order) for anchors and/or a user; anchors get -inf."""

    name: str
    vocab: ItemVocab

    def fit(self, train: Dataset) -> "Ranker": ...

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class PredictedBundle:
    items: tuple[str, ...]
    intent: str = ""
    reason: str = ""


@runtime_checkable
class SessionBundler(Protocol):
    """Partitions a session's items into bundles (sets of >= 2 items) with intents."""

    name: str

    def fit(self, train: Dataset) -> "SessionBundler": ...

    def bundle_sessions(self, sessions: Sequence[Session], dataset: Dataset) -> list[list[PredictedBundle]]: ...


class ScorerRanker:
    """Adapts an ItemScorer (dict scores) to the Ranker contract with a popularity backfill for ties."""

    def __init__(self, scorer, name: str | None = None):
        self.scorer, self.name = scorer, name or scorer.name

    def fit(self, train: Dataset) -> "ScorerRanker":
        self.scorer.fit(train)
        self.vocab = ItemVocab.of(train.products)
        self._pop = PopularityScorer().fit(train)
        return self

    def score_vector(self, anchors: Sequence[str], user_id: str | None = None) -> np.ndarray:
        """The scorer's scores, ties broken by popularity; items it did not score rank below every item it did
        (a negative score is still a score)."""
        backfill = 1e-6 * self._pop.counts / max(self._pop.counts.max(), 1.0)
        scores = self.scorer.score(anchors, user_id)
        vec = backfill + (min(scores.values()) - 1.0 if scores else 0.0)
        for item, s in scores.items():
            j = self.vocab.index.get(item)
            if j is not None:
                vec[j] = s + backfill[j]
        vec[self.vocab.known(anchors)] = -np.inf
        return vec


def _als(settings: Settings) -> Ranker:
    from rag_rec.signals.als import ALSScorer

    # every item scored, the user's own purchases included: repeat purchases are valid basket targets
    return ScorerRanker(ALSScorer(settings.cf, filter_seen=False, max_results=None), "als")


def _behaviour(settings: Settings) -> Ranker:
    from rag_rec.signals.behaviour import BehaviourModel

    return ScorerRanker(BehaviourModel(settings.behaviour, filter_seen=False, max_results=None), "behaviour")


def _text(settings: Settings) -> Ranker:
    from rag_rec.retrieve.rankers import TextRanker

    return TextRanker(settings)


def _lexical(settings: Settings) -> Ranker:
    from rag_rec.retrieve.rankers import LexicalRanker

    return LexicalRanker(settings)


def _hybrid(settings: Settings) -> Ranker:
    from rag_rec.retrieve.rankers import HybridRanker

    return HybridRanker(settings)


def _hybrid_behaviour(settings: Settings) -> Ranker:
    from rag_rec.retrieve.rankers import HybridRanker

    ranker = HybridRanker(settings, behaviour=True)  # what a service with behaviour.serve ranks
    ranker.name = "hybrid-behaviour"
    return ranker


RANKERS: dict[str, Callable[[Settings], Ranker]] = {
    "pop": lambda s: PopularityScorer(),
    "itemknn": lambda s: CooccurrenceScorer(complement=False, max_group_items=s.cf.max_group_items),
    "cooc": lambda s: CooccurrenceScorer(complement=True, substitute_discount=s.cf.substitute_discount,
                                         max_group_items=s.cf.max_group_items),
    "als": _als,
    "text": _text,
    "lexical": _lexical,
    "behaviour": _behaviour,
    "hybrid": _hybrid,
    "hybrid-behaviour": _hybrid_behaviour,
}


def _bundler(name: str) -> Callable[[Settings], SessionBundler]:
    def make(settings: Settings) -> SessionBundler:
        from rag_rec.compose import session as session_mod

        return session_mod.make_bundler(name, settings)

    return make


BUNDLERS: dict[str, Callable[[Settings], SessionBundler]] = {
    name: _bundler(name) for name in ("whole-session", "category", "embedding", "cf-embedding", "llm", "llm-name")
}
