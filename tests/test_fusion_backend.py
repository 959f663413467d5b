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
