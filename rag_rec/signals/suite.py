"""Fits every signal once for a dataset and keeps them together (text vectors, lexical, co-occurrence, ALS,
behaviour)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.console import Console

from rag_rec.data.models import Dataset
from rag_rec.errors import ModelError
from rag_rec.settings import Settings
from rag_rec.signals.cooc import CooccurrenceScorer, ItemVocab, PopularityScorer


@dataclass
class Signals:
    vocab: ItemVocab
    text_vectors: np.ndarray | None
    encoder: object | None
    cooc: CooccurrenceScorer
    popularity: PopularityScorer
    category: object | None = None
    als: object | None = None
    behaviour: object | None = None
    lexical: object | None = None

    def text_matrix_row(self, item_id: str) -> np.ndarray | None:
        j = self.vocab.index.get(item_id)
        return None if j is None or self.text_vectors is None else self.text_vectors[j]


def fit_signals(dataset: Dataset, settings: Settings, *, text: bool = True, als: bool = True,
                behaviour: bool = False, console: Console | None = None) -> Signals:
    console = console or Console(stderr=True)
    vocab = ItemVocab.of(dataset.products)
    cooc = CooccurrenceScorer(complement=True, substitute_discount=settings.cf.substitute_discount,
                              max_partners=settings.cf.max_partners,
                              max_group_items=settings.cf.max_group_items).fit(dataset)
    pop = PopularityScorer().fit(dataset)
    from rag_rec.signals.category import CategoryAffinity

    category = CategoryAffinity().fit(dataset, vocab)
    from rag_rec.signals.lexical import LexicalSimilarity

    lexical = LexicalSimilarity().fit(dataset, vocab)
    encoder, vectors = None, None
    if text:
        from rag_rec.signals.text import EmbeddingCache, SentenceTransformerEncoder, encode_products

        encoder = SentenceTransformerEncoder(settings.embedding)
        cache_path = settings.embedding.cache_path
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache = EmbeddingCache(cache_path) if cache_path is not None else None
        try:
            ids, vectors = encode_products(encoder, [dataset.products[i] for i in vocab.ids], cache, progress=True)
        finally:
            if cache is not None:
                cache.close()
        console.log(f"text vectors: {vectors.shape}")
    als_model = None
    if als and len(dataset.interactions):
        from rag_rec.signals.als import ALSScorer

        als_model = ALSScorer(settings.cf)
        events = dataset.interactions.frame["event"].fillna("purchase").astype(str)
        if events.map(als_model.event_weights).fillna(0.0).gt(0).any():
            als_model.fit(dataset)
        else:  # clicks, wishlists, returns only: no weighted events, so no CF factors (co-occurrence still counts)
            console.log(f"no ALS: none of the events has a weight ({als_model.event_weights})")
            als_model = None
    behaviour_model = None
    if behaviour and len(dataset.interactions):
        try:
            behaviour_model = fit_behaviour(dataset, settings, console.log)
        except ModelError as exc:  # e.g. every history is one item long: nothing to learn an order from
            console.log(f"no behaviour model: {exc}")
    return Signals(vocab, vectors, encoder, cooc, pop, category, als_model, behaviour_model, lexical)


def served_behaviour_model(settings: Settings):
    """The behaviour model a service fits (unfitted): `rag-rec behaviour train` fills its cache ahead of the starts."""
    from rag_rec.signals.behaviour import BehaviourModel

    return BehaviourModel(settings.behaviour, filter_seen=False)


def fit_behaviour(dataset: Dataset, settings: Settings, log=None):
    """The served behaviour model: the network behaviour.cache_dir keeps for this data and these settings, else one
    trained now (and kept there)."""
    return served_behaviour_model(settings).fit_cached(dataset, settings.behaviour.cache_dir, log=log)
