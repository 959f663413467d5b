"""In-process data model: dataclasses for products, sessions and bundles; a typed frame for interactions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

INTERACTION_COLUMNS = {
    "user_id": "string",
    "item_id": "string",
    "timestamp": "int64",
    "event": "string",
    "session_id": "string",
    "quantity": "float64",
    "price": "float64",
}


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    title: str
    category: tuple[str, ...] = ()
    brand: str | None = None
    price: float | None = None
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    in_stock: bool = True

    def text(self) -> str:
        """The text the encoder embeds: title, brand, category path, description and attributes."""
        parts = [self.title]
        if self.brand:
            parts.append(f"Brand: {self.brand}")
        if self.category:
            parts.append("Category: " + " > ".join(self.category))
        if self.description:
            parts.append(self.description)
        parts.extend(f"{k}: {v}" for k, v in self.attributes.items())
        return ". ".join(p for p in parts if p)

    @property
    def kind(self) -> str:
        """What sort of product this is, for telling substitutes from complements: the category path without
        its last level when the path is deep (SD vs CompactFlash cards are both memory cards), else the path;
        uncategorised products fall back to their first title words."""
        if not self.category:
            return " ".join(self.title.lower().split()[:2])
        path = self.category[:-1] if len(self.category) >= 5 else self.category
        return " > ".join(path)

    @property
    def leaf_category(self) -> str:
        return self.category[-1] if self.category else ""

    @property
    def placeholder(self) -> bool:
        """A catalogue row without a real title ("item B008ATLJGC": a session item no bundle file names); the
        title decides, so a product retitled through the API is a real one."""
        return bool(re.fullmatch(rf"(?:item\s+)?{re.escape(self.id)}", self.title.strip(), re.IGNORECASE))


@dataclass(frozen=True, slots=True)
class Bundle:
    id: str
    items: tuple[str, ...]
    intent: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    items: tuple[str, ...]
    user_id: str | None = None
    timestamp: int | None = None


class Interactions:
    """user-item events in a typed DataFrame (columns: INTERACTION_COLUMNS), sorted by time."""

    def __init__(self, frame: pd.DataFrame | None = None):
        if frame is None:
            frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in INTERACTION_COLUMNS.items()})
        for column, dtype in INTERACTION_COLUMNS.items():
            if column not in frame:
                frame[column] = pd.Series([pd.NA] * len(frame), dtype=dtype) if dtype == "string" else (
                    np.nan if dtype == "float64" else 0)
        self.frame = frame[list(INTERACTION_COLUMNS)].astype(INTERACTION_COLUMNS).sort_values(
            "timestamp", kind="stable").reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def users(self) -> list[str]:
        return self.frame["user_id"].dropna().unique().tolist()

    def history(self, user_id: str) -> list[str]:
        return self.frame.loc[self.frame["user_id"] == user_id, "item_id"].tolist()

    def concat(self, other: "Interactions") -> "Interactions":
        return Interactions(pd.concat([self.frame, other.frame], ignore_index=True))


@dataclass
class Dataset:
    """Everything a recommender is trained and evaluated on."""

    name: str
    products: dict[str, Product]
    interactions: Interactions = field(default_factory=Interactions)
    sessions: dict[str, Session] = field(default_factory=dict)
    bundles: list[Bundle] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    neighbours: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    report: "CleaningReport | None" = None

    def product(self, item_id: str) -> Product:
        try:
            return self.products[item_id]
        except KeyError:
            raise KeyError(f"unknown product id {item_id!r} in dataset {self.name}") from None

    def bundles_of_session(self) -> dict[str, list[Bundle]]:
        out: dict[str, list[Bundle]] = {}
        for b in self.bundles:
            if b.session_id is not None:
                out.setdefault(b.session_id, []).append(b)
        return out

    def item_sets(self) -> Iterable[tuple[str, ...]]:
        """Every co-occurrence group the data holds: sessions, then bundles."""
        for s in self.sessions.values():
            yield s.items
        for b in self.bundles:
            yield b.items

    def stats(self) -> dict[str, float]:
        sizes = [len(b.items) for b in self.bundles]
        return {
            "products": len(self.products),
            "users": int(self.interactions.frame["user_id"].nunique()),
            "interactions": len(self.interactions),
            "sessions": len(self.sessions),
            "bundles": len(self.bundles),
            "avg_bundle_size": float(np.mean(sizes)) if sizes else 0.0,
        }


from rag_rec.data.cleaning import CleaningReport  # noqa: E402  (type only, avoids a cycle)
