"""Lexical signal: TF-IDF cosine over titles and brands, pool scores, incremental rows, fusion feature."""

import math

import numpy as np
import pytest

from rag_rec.data.models import Dataset, Product
from rag_rec.signals.cooc import ItemVocab
from rag_rec.signals.lexical import LexicalSimilarity, lexical_text, tokens


def catalogue() -> Dataset:
    products = [
        Product("body", "Canon EOS 250D DSLR camera body", ("E", "Cameras"), brand="Canon"),
        Product("lens", "Canon EF-S 18-55mm lens for EOS", ("E", "Lenses")),
        Product("nikon", "Nikon D3500 DSLR camera", ("E", "Cameras"), brand="Nikon"),
        Product("bag", "Padded shoulder bag", ("E", "Bags"), brand="Lowepro"),
        Product("cable", "USB cable", ("E", "Cables")),
        Product("blank", "", ("E", "Misc")),
    ]
    return Dataset("lex", {p.id: p for p in products})


def test_tokens_and_text_add_a_brand_missing_from_the_title():
    assert tokens("EF-S 18-55mm, Lens!") == ["ef", "s", "18", "55mm", "lens"]
    ps = catalogue().products
    assert lexical_text(ps["body"]) == ps["body"].title          # brand already in the title
    assert lexical_text(ps["bag"]).endswith("Lowepro")
    assert lexical_text(None) == ""


def test_scores_are_tfidf_cosines():
    ds = catalogue()
    lex = LexicalSimilarity().fit(ds)
    scores = dict(zip(lex.vocab.ids, lex.score_vector(["body"])))
    assert scores["body"] == pytest.approx(1.0)
    assert scores["lens"] > 0 and scores["nikon"] > 0   # Canon + EOS; DSLR + camera
    assert scores["bag"] == 0 and scores["blank"] == 0
    # the same number by hand: idf = ln((1+n)/(1+df)) + 1, sublinear tf, L2 rows
    n = len(ds.products)
    idf = {t: math.log((1 + n) / (1 + df)) + 1 for t, df in {"canon": 2, "eos": 2, "dslr": 2, "camera": 2,
                                                               "250d": 1, "body": 1, "ef": 1, "s": 1, "18": 1,
                                                               "55mm": 1, "lens": 1, "for": 1}.items()}
    a = {t: idf[t] for t in ["canon", "eos", "250d", "dslr", "camera", "body"]}
    b = {t: idf[t] for t in ["canon", "ef", "s", "18", "55mm", "lens", "for", "eos"]}
    dot = sum(a[t] * b[t] for t in set(a) & set(b))
    expected = dot / (math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values())))
    assert scores["lens"] == pytest.approx(expected, rel=1e-6)


def test_pool_scores_equal_catalogue_scores_and_average_the_anchors():
    lex = LexicalSimilarity().fit(catalogue())
    pool = np.array([5, 0, 3, 1, 2, 1])                         # any order, repeats, an item without words
    for anchors in (["body"], ["body", "nikon"], ["blank"], ["body", "blank"]):
        whole = lex.score_vector(anchors)
        assert np.allclose(lex.score_pool(lex.vocab.known(anchors), pool), whole[pool])
    both = lex.score_vector(["body", "nikon"])
    one, other = lex.score_vector(["body"]), lex.score_vector(["nikon"])
    assert np.allclose(both, (one + other) / 2)
    assert not lex.score_pool([], pool).any()


def test_update_appends_new_items_and_rewrites_changed_ones():
    ds = catalogue()
    lex = LexicalSimilarity().fit(ds)
    before = lex.score_vector(["lens"]).copy()
    ds.products["tripod"] = Product("tripod", "Canon travel tripod", ("E", "Tripods"))   # "travel" is unseen
    ds.products["bag"] = Product("bag", "Canon padded bag", ("E", "Bags"))                 # changed title
    vocab = ItemVocab.of([*lex.vocab.ids, "tripod"])
    lex.update(ds, vocab, ["tripod", "bag"])
    after = dict(zip(vocab.ids, lex.score_vector(["lens"])))
    assert lex.matrix.shape[0] == len(vocab)
    assert after["tripod"] > 0 and after["bag"] > 0 and before[lex.vocab.index["bag"]] == 0
    for i in ("body", "nikon", "cable"):                       # untouched rows keep their scores
        assert after[i] == pytest.approx(before[lex.vocab.index[i]])
    fresh = LexicalSimilarity().fit(ds, vocab)
    assert "travel" not in lex.terms and "travel" in fresh.terms
    assert lex._term_table.matrix is lex.matrix  # update rebuilt the pool scorer's term table with the rows
    pool = np.arange(len(vocab))
    assert np.allclose(lex.score_pool(vocab.known(["lens"]), pool), [after[i] for i in vocab.ids])


def test_a_catalogue_without_words_scores_zero_everywhere():
    ds = Dataset("blank", {i: Product(i, "", ("E",)) for i in ("a", "b")})
    lex = LexicalSimilarity().fit(ds)
    assert lex.matrix.shape == (2, 0)
    assert not lex.score_vector(["a"]).any() and not lex.score_pool([0], np.array([0, 1])).any()
    ds.products["c"] = Product("c", "brand new words", ("E",))
    lex.update(ds, ItemVocab.of(["a", "b", "c"]), ["c"])
    assert lex.matrix.shape == (3, 0) and not lex.score_vector(["c"]).any()


def test_a_title_with_more_words_than_a_table_row_keeps_its_heaviest_words():
    from rag_rec.signals import lexical as lx

    words = [f"w{i}" for i in range(lx.MAX_TERMS_PER_ROW + 30)]
    products = {"long": Product(id="long", title=" ".join(words), brand="Acme"),
                "short": Product(id="short", title="w1 w2 w3", brand="Acme")}
    products.update({f"f{i}": Product(id=f"f{i}", title=f"w{i} filler", brand="Other") for i in range(40)})
    lex = LexicalSimilarity().fit(Dataset(name="t", products=products))
    table = lex._table()
    assert table.terms.shape[1] == lx.MAX_TERMS_PER_ROW
    assert table.lengths[lex.vocab.index["long"]] == lx.MAX_TERMS_PER_ROW
    short = lex.vocab.index["short"]
    pool = np.arange(len(lex.vocab))
    np.testing.assert_allclose(lex.score_pool([short], pool)[short], 1.0, rtol=1e-6)
