"""Collaborative filtering signal: implicit-feedback ALS (the `implicit` library, CPU) on user-item events."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rag_rec.errors import ModelError, RagRecError
from rag_rec.settings import CFSettings

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {"purchase": 1.0, "cart": 0.5, "view": 0.2}


class NotFittedError(RagRecError):
    """A model was used before fit() or load()."""


class ALSScorer:
    """ItemScorer from ALS factors: a known user's factors, else the mean factors of the known anchors.

    Events are weighted by type (`event_weights`; types not listed are ignored, a missing type counts as a
    purchase) and summed per (user, item). Only items with at least one event get factors.
    """

    name = "cf"

    def __init__(self, settings: CFSettings | None = None, *, event_weights: Mapping[str, float] | None = None,
                 alpha: float = 1.0, seed: int = 0, filter_seen: bool = True, max_results: int | None = 1000):
        self.settings = settings or CFSettings()
        self.event_weights = dict(DEFAULT_EVENT_WEIGHTS if event_weights is None else event_weights)
        self.alpha, self.seed, self.filter_seen, self.max_results = alpha, seed, filter_seen, max_results
        self._model = None
        self.item_ids: list[str] = []
        self.user_ids: list[str] = []
        self._item_index: dict[str, int] = {}
        self._user_index: dict[str, int] = {}
        self._user_items: sp.csr_matrix | None = None

    def _new_model(self):
        from implicit.cpu.als import AlternatingLeastSquares

        with _single_threaded_blas():
            return AlternatingLeastSquares(
                factors=self.settings.als_factors,
                regularization=self.settings.als_regularization,
                alpha=self.alpha,
                iterations=self.settings.als_iterations,
                num_threads=self.settings.threads,
                random_state=self.seed,
            )

    def user_item_matrix(self, frame) -> sp.csr_matrix:
        """Weighted user x item CSR over `frame` (an Interactions frame); sets the id indexes."""
        events = frame["event"].fillna("purchase").astype(str)
        weights = events.map(self.event_weights).astype("float64").fillna(0.0).to_numpy()
        keep = (weights > 0) & frame["user_id"].notna().to_numpy() & frame["item_id"].notna().to_numpy()
        users = frame["user_id"][keep].astype(str).to_numpy()
        items = frame["item_id"][keep].astype(str).to_numpy()
        self.user_ids = list(dict.fromkeys(users))
        self.item_ids = list(dict.fromkeys(items))
        self._user_index = {u: i for i, u in enumerate(self.user_ids)}
        self._item_index = {it: i for i, it in enumerate(self.item_ids)}
        rows = np.fromiter((self._user_index[u] for u in users), dtype=np.int32, count=len(users))
        cols = np.fromiter((self._item_index[i] for i in items), dtype=np.int32, count=len(items))
        matrix = sp.csr_matrix((weights[keep].astype(np.float32), (rows, cols)),
                               shape=(len(self.user_ids), len(self.item_ids)), dtype=np.float32)
        matrix.sum_duplicates()
        return matrix

    def fit(self, dataset) -> ALSScorer:
        matrix = self.user_item_matrix(dataset.interactions.frame)
        if matrix.nnz == 0:
            raise ModelError(f"dataset {dataset.name!r} has no weighted user-item events to fit ALS on "
                             f"(event weights: {self.event_weights})")
        self._model = self._new_model()
        with _single_threaded_blas():
            self._model.fit(matrix, show_progress=False)
        self._user_items = matrix
        return self

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def _require_fitted(self):
        if self._model is None:
            raise NotFittedError("ALSScorer is not fitted; call fit(dataset) or ALSScorer.load(path)")
        return self._model

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        """(item ids, float32 item factors), for the index's `cf` named vector (dot product space)."""
        model = self._require_fitted()
        return list(self.item_ids), np.asarray(model.item_factors, dtype=np.float32).copy()

    def item_rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each item in item_vectors()' matrix (-1: the model has no factors for it)."""
        self._require_fitted()
        index = self._item_index
        return np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def item_vector(self, item_id: str) -> np.ndarray | None:
        """The item's factors (float32), None for items the model has none for."""
        model = self._require_fitted()
        row = self._item_index.get(item_id)
        return None if row is None else np.asarray(model.item_factors[row], dtype=np.float32).copy()

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """The user's factors, in the same space as item_vectors(); None for unknown users."""
        model = self._require_fitted()
        index = self._user_index.get(user_id)
        return None if index is None else np.asarray(model.user_factors[index], dtype=np.float32).copy()

    def anchor_vector(self, anchors: Sequence[str]) -> np.ndarray | None:
        model = self._require_fitted()
        known = [self._item_index[a] for a in anchors if a in self._item_index]
        return np.asarray(model.item_factors[known], dtype=np.float32).mean(axis=0) if known else None

    def score(self, anchors: Sequence[str], user_id: str | None = None) -> dict[str, float]:
        model = self._require_fitted()
        query = self.user_vector(user_id) if user_id is not None else None
        if query is None:
            query = self.anchor_vector(anchors)
        if query is None:
            return {}
        scores = np.asarray(model.item_factors, dtype=np.float32) @ query
        excluded = [self._item_index[a] for a in anchors if a in self._item_index]
        if self.filter_seen and user_id in self._user_index:
            excluded.extend(self._user_items[self._user_index[user_id]].indices.tolist())
        scores[excluded] = -np.inf
        return _top(self.item_ids, scores, self.max_results)

    def fold_in(self, user_id: str, items: Sequence[str], event: str = "purchase") -> int:
        """Add events for a (new or known) user and recompute only that user's factors (partial_fit_users).

        Returns how many of `items` the model knows; unknown items are ignored until the next fit.
        """
        return self.fold_in_many([(user_id, item, event) for item in items] or [(user_id, None, event)])

    def fold_in_many(self, events: Sequence[tuple[str, str | None, str]]) -> int:
        """fold_in for a batch of (user, item, event): one sparse update, one partial_fit_users for all
        touched users. Returns how many events had a known item."""
        model = self._require_fitted()
        weighted = [(user, item, self.event_weights.get(event, 0.0)) for user, item, event in events]
        weighted = [(user, item, w) for user, item, w in weighted if item in self._item_index and w > 0]
        if not weighted:  # views of unknown items, clicks, returns: no factors to learn (a new user stays unknown)
            return 0
        # Readers take no lock: a new user becomes visible (index, ids) only after its factors and rows exist.
        new_users = [u for u in dict.fromkeys(u for u, _, _ in weighted) if u not in self._user_index]
        user_index = {**self._user_index, **{u: len(self.user_ids) + n for n, u in enumerate(new_users)}}
        user_ids = self.user_ids + new_users
        rows = [user_index[user] for user, _, _ in weighted]
        cols = [self._item_index[item] for _, item, _ in weighted]
        vals = [w for _, _, w in weighted]
        shape = (len(user_ids), len(self.item_ids))
        matrix = self._user_items
        if new_users:
            matrix = sp.csr_matrix((matrix.data, matrix.indices,
                                    np.concatenate([matrix.indptr, np.full(len(new_users), matrix.indptr[-1])])),
                                   shape=shape)
        if vals:
            matrix = (matrix + sp.csr_matrix((np.asarray(vals, dtype=np.float32), (rows, cols)), shape=shape)).tocsr()
        touched = np.array(sorted(set(rows)))
        with _single_threaded_blas():
            model.partial_fit_users(touched, matrix[touched])
        self._user_items = matrix
        self.user_ids, self._user_index = user_ids, user_index
        return len(vals)

    def save(self, path: str | Path) -> Path:
        model = self._require_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = self._user_items
        with open(path, "wb") as fh:
            np.savez(fh, item_ids=np.array(self.item_ids, dtype=str), user_ids=np.array(self.user_ids, dtype=str),
                     item_factors=model.item_factors, user_factors=model.user_factors,
                     ui_data=m.data, ui_indices=m.indices, ui_indptr=m.indptr, ui_shape=np.array(m.shape),
                     settings=np.array(self.settings.model_dump_json()),
                     event_weights=np.array(list(self.event_weights.items()), dtype=str).reshape(-1, 2),
                     alpha=np.array(self.alpha), seed=np.array(self.seed))
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> ALSScorer:
        try:
            data = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read ALS model {path}: {exc}") from exc
        weights = {str(k): float(v) for k, v in data["event_weights"]}
        stored = {"event_weights": weights, "alpha": float(data["alpha"]), "seed": int(data["seed"])}
        scorer = cls(CFSettings.model_validate_json(str(data["settings"])), **{**stored, **kwargs})
        scorer.item_ids = data["item_ids"].tolist()
        scorer.user_ids = data["user_ids"].tolist()
        scorer._item_index = {it: i for i, it in enumerate(scorer.item_ids)}
        scorer._user_index = {u: i for i, u in enumerate(scorer.user_ids)}
        scorer._user_items = sp.csr_matrix((data["ui_data"], data["ui_indices"], data["ui_indptr"]),
                                           shape=tuple(data["ui_shape"]))
        model = scorer._new_model()
        model.item_factors = data["item_factors"].astype(np.float32)
        model.user_factors = data["user_factors"].astype(np.float32)
        scorer._model = model
        return scorer


@functools.lru_cache(maxsize=1)
def _threadpools():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # scans the loaded libraries once (~1.5 ms), not on every fold-in


def _single_threaded_blas():
    """implicit runs its own threads; a multi-threaded BLAS underneath slows it down (and it warns)."""
    return _threadpools().limit(limits=1, user_api="blas")


def _top(ids: Sequence[str], scores: np.ndarray, limit: int | None) -> dict[str, float]:
    finite = np.flatnonzero(np.isfinite(scores))
    if limit is not None and len(finite) > limit:
        finite = finite[np.argpartition(-scores[finite], limit - 1)[:limit]]
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return {ids[i]: float(scores[i]) for i in order}
