"""Pydantic models for everything that crosses a process boundary (HTTP API, agent tools, LLM JSON)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rag_rec.constants import MAX_TIMESTAMP

MAX_ANCHORS = 20
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Filters(Strict):
    min_price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    categories: list[str] = Field(default_factory=list, max_length=20,
                                  description="Keep products whose category path contains any of these")
    in_stock_only: bool = False
    exclude_ids: list[ProductId] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _price_range(self) -> "Filters":
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise PydanticCustomError("price_range", "min_price {low} is above max_price {high}",
                                      {"low": self.min_price, "high": self.max_price})
        return self


class BundleRequest(Strict):
    user_id: str | None = Field(default=None, max_length=128)
    anchor_items: list[ProductId] = Field(default_factory=list, max_length=MAX_ANCHORS)
    need: str | None = Field(default=None, max_length=1000, description="What the shopper needs, in words")
    filters: Filters = Field(default_factory=Filters)
    budget: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="Max total price of a bundle")
    k: int = Field(default=3, ge=1, le=10, description="Number of bundles")
    bundle_size: int = Field(default=3, ge=2, le=6)
    use_llm: bool = True

    @field_validator("need")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None


class ItemOut(Strict):
    id: ProductId
    title: str
    category: list[str] = Field(default_factory=list)
    price: float | None = None
    sources: list[str] = Field(default_factory=list, description="Signals that retrieved it (cooc, cf, text, ...)")


class BundleOut(Strict):
    title: str
    items: list[ItemOut]
    reason: str
    total_price: float | None = None
    score: float = 0.0


class BundleResponse(Strict):
    bundles: list[BundleOut]
    produced_by: Literal["llm", "llm_repaired", "fallback", "heuristic"]
    model: str | None = None
    candidates_considered: int = 0
    latency_ms: float = 0.0
    notes: list[str] = Field(default_factory=list)


CopyLanguage = Literal["English", "German", "French", "Spanish", "Italian", "Portuguese", "Dutch", "Russian",
                       "Japanese", "Chinese"]


class CopyRequest(Strict):
    items: list[ProductId] = Field(min_length=2, max_length=8)
    tone: Literal["friendly", "premium", "playful", "technical", "neutral"] = "friendly"
    length: Literal["short", "medium", "long"] = "short"
    language: CopyLanguage = Field(default="English", description="Languages the copy checks know the claim "
                                   "words of (prices, discounts, ratings, promises)")

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[str]) -> list[str]:
        repeated = sorted({i for i in items if items.count(i) > 1})
        if repeated:
            raise PydanticCustomError("distinct", "a bundle lists each product once; repeated: {ids}",
                                      {"ids": ", ".join(repeated)})
        return items


class CopyResponse(Strict):
    title: str
    blurb: str
    items: list[ItemOut]
    produced_by: Literal["llm", "llm_repaired", "fallback", "heuristic"]
    notes: list[str] = Field(default_factory=list, description="Why the template was served and what of the request "
                             "(tone, length, language) it could not apply")


class ChatMessage(Strict):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=2000)


class ChatRequest(Strict):
    messages: list[ChatMessage] = Field(min_length=1, max_length=30)
    user_id: str | None = Field(default=None, max_length=128)
    filters: Filters = Field(default_factory=Filters)
    budget: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class EventIn(Strict):
    user_id: str = Field(min_length=1, max_length=128)
    item_id: ProductId = Field(min_length=1, max_length=128)
    event: Literal["view", "click", "cart", "purchase", "wishlist", "return"] = "purchase"
    timestamp: int | None = Field(default=None, ge=0, le=MAX_TIMESTAMP, description="Unix seconds")
    session_id: str | None = Field(default=None, max_length=128)
    quantity: float = Field(default=1.0, gt=0, le=1000)


class EventsIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class ProductIn(Strict):
    id: ProductId = Field(min_length=1, max_length=128)
    title: str = Field(min_length=1, max_length=500)
    category: list[str] = Field(default_factory=list, max_length=10)
    brand: str | None = Field(default=None, max_length=200)
    price: float | None = Field(default=None, ge=0, le=1_000_000)
    description: str | None = Field(default=None, max_length=4000)
    in_stock: bool = True

    @field_validator("id", "title")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise PydanticCustomError("blank", "must not be blank")
        return v

    @field_validator("category")
    @classmethod
    def _levels(cls, levels: list[str]) -> list[str]:
        if any(not level.strip() for level in levels):
            raise PydanticCustomError("blank", "category levels must not be blank")
        return [level.strip() for level in levels]


class ProductsIn(Strict):
    products: list[ProductIn] = Field(min_length=1, max_length=500)


class UpsertResult(Strict):
    accepted: int
    total: int


# ---- LLM JSON contracts (validated after generation; the JSON schema restricts ids to candidates) ----


class LLMBundle(Strict):
    title: str = Field(min_length=1, max_length=120)
    items: list[str] = Field(min_length=2, max_length=6)
    reason: str = Field(min_length=1, max_length=600)


class LLMBundles(Strict):
    bundles: list[LLMBundle] = Field(min_length=1, max_length=10)


MAX_SESSION_GROUP_ITEMS = 10  # the JSON schema the session bundler sends caps answers at these too
MAX_SESSION_GROUPS = 10


class LLMSessionGroup(Strict):
    intent: str = Field(min_length=1, max_length=120)
    items: list[str] = Field(min_length=2, max_length=MAX_SESSION_GROUP_ITEMS)


class LLMSessionGroups(Strict):
    bundles: list[LLMSessionGroup] = Field(max_length=MAX_SESSION_GROUPS)


class LLMCopy(Strict):
    title: str = Field(min_length=1, max_length=120)
    blurb: str = Field(min_length=1, max_length=1200)


class LLMJudgement(Strict):
    critique: str | None = Field(default=None, max_length=400)
    naturalness: int = Field(ge=1, le=3)
    coverage: int = Field(ge=1, le=3)
    motivation: int = Field(ge=1, le=2)
    faithful: bool
