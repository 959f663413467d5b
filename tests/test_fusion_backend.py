"""Which fusion backend the retriever takes, and the error when the compiled one is asked for but missing."""

import sys

import pytest

from rag_rec.retrieve import fusion_kernel
from rag_rec.retrieve.hybrid import HybridRetriever
from rag_rec.settings import RetrieveSettings


@pytest.fixture
def without_numba(monkeypatch):
    fusion_kernel.compiled.cache_clear()
    monkeypatch.setitem(sys.modules, "numba", None)
    yield
    monkeypatch.undo()
    fusion_kernel.compiled.cache_clear()


def retriever(backend: str) -> HybridRetriever:
    return HybridRetriever(None, None, {}, RetrieveSettings(fusion_backend=backend))


def test_auto_takes_the_compiled_fusion_when_numba_is_installed():
    assert retriever("auto").compiled == fusion_kernel.available()
    assert not retriever("numpy").compiled


def test_without_numba_auto_falls_back_and_numba_names_the_extra(without_numba):
    assert not fusion_kernel.available()
    assert not retriever("auto").compiled
    with pytest.raises(fusion_kernel.FusionBackendUnavailable, match=r"rag_rec\[fast\]"):
        retriever("numba")


def test_unknown_backend_is_rejected_by_the_settings():
    with pytest.raises(ValueError, match="fusion_backend"):
        RetrieveSettings(fusion_backend="cuda")


def test_served_ids_come_from_a_string_array_that_follows_the_vocabulary():
    from types import SimpleNamespace

    from rag_rec.signals.cooc import ItemVocab

    r = HybridRetriever(None, SimpleNamespace(vocab=ItemVocab.of(["a1", "b22", "c333"])), {}, RetrieveSettings())
    ids = r._id_array()
    assert ids.dtype.kind == "U" and ids[[2, 0]].tolist() == ["c333", "a1"]
    r.signals.vocab = ItemVocab.of(["a1", "b22", "c333", "x" * 200])  # grown, with an id too long for fixed width
    ids = r._id_array()
    assert ids.dtype == object and ids[[3, 1]].tolist() == ["x" * 200, "b22"]


def test_candidates_read_sources_evidence_and_payload_from_their_ranked_row_when_asked():
    from functools import partial

    import numpy as np

    from rag_rec.retrieve.base import Candidate
    from rag_rec.retrieve.hybrid import found_by_of

    names = ("text", "lex")
    code = fusion_kernel.FROM_COOC + fusion_kernel.FROM_ENGINE + (fusion_kernel.POSITIVE << 1)
    ranked = np.array([[0.9, 3.0, code, 0.0, 0.9],
                       [0.5, 0.0, fusion_kernel.FROM_ENGINE + fusion_kernel.POSITIVE, 0.5, 0.0]])
    found_by = partial(found_by_of, names=names, base_source="engine")
    a, b = Candidate.from_ranked(["A", "B"], ranked, names, fusion_kernel.RANKED_COLUMNS, found_by, True)
    assert (a.id, a.score, b.id, b.score) == ("A", 0.9, "B", 0.5)
    assert a.payload == {"found_by": ["cooc", "lex"]} and b.payload == {"found_by": ["text"]}
    assert a.evidence == {"co_purchases": 3} and b.evidence == {"co_purchases": 0}
    assert a.sources == {"text": 0.0, "lex": 0.9} and b.sources == {"text": 0.5, "lex": 0.0}
    assert a == Candidate("A", 0.9, {"text": 0.0, "lex": 0.9}, {"co_purchases": 3}, {"found_by": ["cooc", "lex"]})
    a.payload["note"] = "kept"  # built once, then the candidate's own dict
    b.evidence = {"co_purchases": 7}
    assert a.payload["note"] == "kept" and b.evidence == {"co_purchases": 7}
    (c,) = Candidate.from_ranked(["C"], ranked[:1], names, fusion_kernel.RANKED_COLUMNS, found_by, False)
    assert c.evidence == {} and c.payload == {"found_by": ["cooc", "lex"]}


numba_only = pytest.mark.skipif(not fusion_kernel.available(), reason="the compiled fusion needs numba")


@numba_only
def test_the_kernels_small_sort_and_search_loops_match_numpy():
    import numpy as np

    fusion_kernel.compiled()
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 7, 140, 400):
        ties = rng.integers(0, 5, size=n).astype(np.float64)  # many equal values: their order is the test
        spread = rng.normal(size=n)
        spread[rng.random(n) < 0.1] = np.nan
        spread[rng.random(n) < 0.05] = -np.inf
        for values in (ties, spread):
            for m in (0, 1, 40, n, n + 3):
                expected = np.argsort(-values, kind="mergesort")[:m]
                assert fusion_kernel._top_order(values, m).tolist() == expected.tolist(), (n, m)
        ints = rng.integers(0, 20, size=n)
        assert fusion_kernel._ascending_order(ints).tolist() == np.argsort(ints, kind="stable").tolist()
        assert fusion_kernel._unique(ints).tolist() == np.unique(ints).tolist()
        ascending = np.sort(ints)
        for x in (-1, 0, 5, 19, 25):
            for lo, hi in ((0, n), (n // 3, n)):
                assert fusion_kernel._bisect(ascending, lo, hi, x) == lo + np.searchsorted(ascending[lo:hi], x)
    vector = rng.normal(size=7).astype(np.float32)
    even, odd = fusion_kernel._split_pairs(vector)
    assert even.tolist() == vector[0::2].tolist() and odd.tolist() == vector[1::2].tolist()
    assert [a.tolist() for a in fusion_kernel.split_pairs(vector[None, :])] == [[even.tolist()], [odd.tolist()]]
