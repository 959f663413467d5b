"""Product vector index: one VectorStore interface; embedded Qdrant edge and qdrant-client backends."""

from __future__ import annotations

from pathlib import Path

from rag_rec.index.base import (
    PRODUCT_PAYLOAD_INDEXES,
    Filter,
    Hit,
    Prefetch,
    Record,
    VectorSpec,
    VectorStore,
)
from rag_rec.settings import IndexSettings

__all__ = [
    "PRODUCT_PAYLOAD_INDEXES",
    "Filter",
    "Hit",
    "Prefetch",
    "Record",
    "VectorSpec",
    "VectorStore",
    "open_store",
]


def open_store(settings: IndexSettings, *, path_override: str | Path | None = None) -> VectorStore:
    """The store `settings.backend` names: 'edge' (embedded, under settings.path/collection) or 'qdrant'
    (settings.url: a server URL or ':memory:'; without a url, qdrant-client local mode under
    settings.path)."""
    path = Path(path_override) if path_override is not None else settings.path
    if settings.backend == "edge":
        from rag_rec.index.edge import EdgeStore

        return EdgeStore(
            path,
            collection=settings.collection,
            hnsw_m=settings.hnsw_m,
            hnsw_ef_construct=settings.hnsw_ef_construct,
            max_search_threads=settings.search_threads or None,
        )
    from rag_rec.index.qdrant import QdrantStore

    url = None if path_override is not None else settings.url
    return QdrantStore(
        url=url,
        path=path if url is None else None,
        api_key=settings.api_key,
        collection=settings.collection,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construct=settings.hnsw_ef_construct,
    )
