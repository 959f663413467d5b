"""The product facade the API, the chat assistant and agent tools call. One implementation: pipeline.BundlePipeline."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rag_rec.schemas import (
    BundleRequest,
    BundleResponse,
    CopyRequest,
    CopyResponse,
    EventsIn,
    ItemOut,
    ProductsIn,
    UpsertResult,
)


@runtime_checkable
class BundleService(Protocol):
    """Grounded bundle recommendations: every item id served was retrieved for that request."""

    def recommend(self, request: BundleRequest) -> BundleResponse:
        """Bundles for a user and/or anchor items and/or a need. Unknown ids give notes, not errors."""

    def copy(self, request: CopyRequest) -> CopyResponse:
        """Title + blurb for a bundle of known products (KeyError naming an unknown id; a pydantic ValidationError
        naming items[N] for a product whose title is only a placeholder)."""

    def add_events(self, events: EventsIn) -> UpsertResult:
        """Record interactions and update CF signals incrementally."""

    def add_products(self, products: ProductsIn) -> UpsertResult:
        """Upsert products into the catalogue and the index (idempotent by id)."""

    def search_products(self, query: str, k: int = 10) -> list[ItemOut]:
        """Text search over the catalogue (for the chat page and agents)."""

    def product(self, item_id: str) -> ItemOut | None: ...

    def health(self) -> dict[str, object]: ...
