"""Signal interfaces: text encoders and item-item / user-item scorers."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of size `dim`."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int | None = None, progress: bool = False) -> np.ndarray: ...


@runtime_checkable
class ItemScorer(Protocol):
    """Scores catalogue items for a context of anchor items and/or a user: higher is better."""

    name: str

    def fit(self, dataset) -> "ItemScorer": ...

    def score(self, anchors: Sequence[str], user_id: str | None = None) -> dict[str, float]:
        """Scores for items (anchors excluded); unknown anchors/users give an empty dict, never an error."""
