"""Events and products sent through the API leave the signals where a fresh start on the same final data would
(up to ALS fold-in), and the lexical signal reads words of any script."""

import csv
import json
import unicodedata

import numpy as np
import pytest

from rag_rec.data.models import Product
from rag_rec.schemas import EventIn, EventsIn
from rag_rec.settings import Settings
from rag_rec.signals.lexical import lexical_text, tokens

KINDS = ["Tents", "Stoves", "Lamps", "Bags", "Mats", "Pots"]


def write_shop(root, events):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "products.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "category", "price", "in_stock"])
        for i in range(18):
            w.writerow([f"p{i}", f"Trail {KINDS[i % 6][:-1].lower()} model {i}", f"Outdoor > {KINDS[i % 6]}",
                        10 + i, "true"])
    (root / "events.jsonl").write_text("\n".join(json.dumps({k: v for k, v in e.items() if v is not None})
                                                 for e in events) + "\n")
    return root


def open_pipeline(tmp_path, root, name):
    from rag_rec.pipeline import BundlePipeline

    settings = Settings(index={"path": tmp_path / name}, llm={"backend": "none"}, data={"journal": False},
                        embedding={"cache_path": tmp_path / "embeddings.sqlite"})
    return BundlePipeline.from_settings(settings, data=f"generic:{root}")


def final_events(pipeline):
    return [{k: (int(v) if k == "timestamp" else v) for k, v in row.items()
             if k in ("user_id", "item_id", "timestamp", "event", "session_id") and isinstance(v, (str, int, np.integer))}
            for row in pipeline.interactions.frame.to_dict("records")]


def observed(pipeline):
    s, ids = pipeline.signals, [f"p{i}" for i in range(18)]
    rows = np.array([s.vocab.index[i] for i in ids])
    return {
        "popularity": s.popularity.counts[rows].tolist(),
        "category affinity of p0": np.round(s.category.score_pool([s.vocab.index["p0"]], rows), 6).tolist(),
        "evidence": {(a, b): s.cooc.evidence([a], b) for a in ids[:6] for b in ids if a != b},
    }


@pytest.mark.slow
@pytest.mark.parametrize("with_sessions", [True, False])
def test_api_events_leave_the_signals_where_a_fresh_start_would(tmp_path, with_sessions):
    session = (lambda n: f"s{n // 3}") if with_sessions else (lambda n: None)
    base = [{"user_id": f"u{n % 5}", "item_id": f"p{n}", "timestamp": 1700000000 + n, "session_id": session(n)}
            for n in range(18)]
    base.append({"user_id": "u0", "item_id": "p11", "timestamp": 1700000100, "event": "return"})
    pipeline = open_pipeline(tmp_path, write_shop(tmp_path / "shop", base), "live")
    try:
        api = [EventIn(user_id=f"n{k}", item_id=i, timestamp=1700001000 + 2 * k + j,
                       session_id=f"t{k}" if with_sessions else None)
               for k in range(5) for j, i in enumerate(("p0", "p3"))]  # tents bought with bags
        api += [EventIn(user_id="u1", item_id="p2", timestamp=1700002000, session_id="t9" if with_sessions else None),
                EventIn(user_id="u0", item_id="p4", timestamp=1700002001, event="return")]
        pipeline.add_events(EventsIn(events=api))
        live = observed(pipeline)
        events = final_events(pipeline)
    finally:
        pipeline.close()
    fresh = open_pipeline(tmp_path, write_shop(tmp_path / "final", events), "fresh")
    try:
        assert observed(fresh) == live
    finally:
        fresh.close()
    assert live["evidence"][("p0", "p3")] >= 5 and live["evidence"][("p0", "p11")] == 0  # a return is no purchase


def test_the_embedding_cache_keeps_unnormalised_vectors_apart(tmp_path):
    from rag_rec.signals.text import EmbeddingCache, SentenceTransformerEncoder, encode_cached

    cache = EmbeddingCache(tmp_path / "e.sqlite")

    class Scaled(SentenceTransformerEncoder):  # a model directory without a Normalize module
        def encode(self, texts, **kw):
            vectors = super().encode(texts, **kw)
            return vectors if self.settings.normalize else vectors * 7.0

    raw = Scaled(Settings(embedding={"normalize": False}).embedding)
    unit = Scaled(Settings().embedding)
    first = encode_cached(raw, ["trail lamp"], cache)
    second = encode_cached(unit, ["trail lamp"], cache)
    assert np.linalg.norm(first[0]) == pytest.approx(7.0, rel=1e-2)
    assert np.linalg.norm(second[0]) == pytest.approx(1.0, rel=1e-2)
    assert raw.name != unit.name == Settings().embedding.model  # existing caches stay valid


@pytest.mark.parametrize("text, words", [
    ("चाय कप", ["चाय", "कप"]),
    ("चाबी", ["चाबी"]),
    (unicodedata.normalize("NFD", "Crème brûlée"), ["crème", "brûlée"]),
    ("ＵＳＢ ケーブル", ["usb", "ケーブル"]),
    ("Canon EOS 5D Mark-II", ["canon", "eos", "5d", "mark", "ii"]),
])
def test_lexical_words_keep_their_marks_in_any_script(text, words):
    assert tokens(text) == words


def test_the_brand_joins_a_title_that_names_it_only_inside_another_word():
    assert lexical_text(Product("a", "Space heater 2000", brand="Ace")) == "Space heater 2000 Ace"
    assert lexical_text(Product("b", "ACE fan 300", brand="Ace")) == "ACE fan 300"


@pytest.mark.parametrize("with_sessions", [True, False])
def test_event_updates_to_pair_counts_happen_inside_the_retrievers_sequence_lock(tmp_path, with_sessions):
    """A request that overlapped an event batch's co-occurrence update is redone, as one that overlapped a product
    row write: it never fuses new pair counts with the old counts they are normalised by."""
    session = (lambda n: f"s{n // 3}") if with_sessions else (lambda n: None)
    base = [{"user_id": f"u{n % 5}", "item_id": f"p{n}", "timestamp": 1700000000 + n, "session_id": session(n)}
            for n in range(18)]
    pipeline = open_pipeline(tmp_path, write_shop(tmp_path / "shop", base), "live")
    try:
        cooc, scorer = pipeline.signals.cooc, pipeline.retriever.scorer
        seen = []
        add_delta = cooc._add_delta
        cooc._add_delta = lambda *args: (seen.append(scorer.seq), add_delta(*args))[1]
        before = scorer.seq
        pipeline.add_events(EventsIn(events=[EventIn(user_id="u1", item_id=i, session_id="t1" if with_sessions else None)
                                             for i in ("p0", "p3")]))
        assert seen and all(seq & 1 for seq in seen)
        assert scorer.seq > before and not scorer.seq & 1
        assert cooc.evidence(["p0"], "p3") >= 1
    finally:
        pipeline.close()
