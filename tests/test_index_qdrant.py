"""QdrantStore specifics: how it is reached (URL, :memory:, path) and how it fails."""

from __future__ import annotations

import numpy as np
import pytest

from rag_rec.errors import IndexStoreError
from rag_rec.index import Record, VectorSpec, open_store
from rag_rec.index.qdrant import QdrantStore
from rag_rec.settings import IndexSettings


def test_settings_choose_memory_server_or_path(tmp_path):
    memory = open_store(IndexSettings(backend="qdrant", url=":memory:"))
    local = open_store(IndexSettings(backend="qdrant", path=tmp_path / "q"))
    try:
        assert memory.location == ":memory:"
        assert local.location == str(tmp_path / "q")
    finally:
        memory.close()
        local.close()


def test_unreachable_server_gives_a_clear_error():
    with pytest.raises(IndexStoreError, match=r"http://127\.0\.0\.1:9"):
        QdrantStore(url="http://127.0.0.1:9", collection="products", timeout_s=2)


def test_corrupt_local_directory_gives_a_clear_error(tmp_path):
    with QdrantStore(path=tmp_path) as store:
        store.ensure_collection([VectorSpec("text", 4)], {})
        store.upsert([Record("a", {"text": np.ones(4)}, {})])
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(IndexStoreError, match=str(tmp_path)):
        QdrantStore(path=tmp_path)


def test_collections_are_separate(tmp_path):
    with QdrantStore(url=":memory:", collection="a") as a:
        a.ensure_collection([VectorSpec("text", 4)], {})
        a.upsert([Record("x", {"text": np.ones(4)}, {})])
        assert a.count() == 1
        assert a.client.collection_exists("a") and not a.client.collection_exists("b")
