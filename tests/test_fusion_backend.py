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
