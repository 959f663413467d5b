"""ALS collaborative filtering on the real Amazon electronic interactions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rag_rec.data.models import Dataset, Interactions
from rag_rec.settings import CFSettings
from rag_rec.signals.als import ALSScorer, NotFittedError
from rag_rec.signals.base import ItemScorer

K = 20


def leave_last_out(dataset: Dataset, min_events: int = 3) -> tuple[Dataset, pd.DataFrame]:
    """Train dataset without each user's last event (users with min_events+), and the held-out events."""
    frame = dataset.interactions.frame
    counts = frame.groupby("user_id").size()
    last = frame.groupby("user_id").tail(1)
    last = last[last["user_id"].map(counts) >= min_events]
    train = Dataset(dataset.name, dataset.products, Interactions(frame.drop(index=last.index).copy()))
    return train, last


def popularity_random_hit_rate(train: Dataset, targets: pd.Series, draws: int = 50, seed: int = 0) -> float:
    """Hit rate of K items drawn at random in proportion to their training popularity."""
    popularity = train.interactions.frame["item_id"].value_counts()
    ids = popularity.index.to_numpy()
    p = (popularity / popularity.sum()).to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    rates = [np.mean([t in set(rng.choice(ids, K, replace=False, p=p)) for t in targets]) for _ in range(draws)]
    return float(np.mean(rates))


@pytest.fixture(scope="module")
def split(electronic):
    return leave_last_out(electronic)


@pytest.fixture(scope="module")
def fitted(split) -> ALSScorer:
    return ALSScorer(CFSettings()).fit(split[0])


def test_als_hit_rate_beats_popularity_random(split, fitted):
    train, held_out = split
    assert isinstance(fitted, ItemScorer)
    hits = [target in list(fitted.score([], user))[:K] for user, target in zip(held_out["user_id"],
                                                                                held_out["item_id"])]
    hit_rate = float(np.mean(hits))
    baseline = popularity_random_hit_rate(train, held_out["item_id"])
    print(f"ALS HR@{K} {hit_rate:.4f} vs popularity-random {baseline:.4f} over {len(hits)} users")
    assert len(hits) > 500
    assert hit_rate > baseline
    assert hit_rate > K / len(fitted.item_ids)


def test_unknown_user_and_items_give_empty_scores(fitted):
    assert fitted.score(["no-such-item"], "no-such-user") == {}
    assert fitted.score([], None) == {}
    assert fitted.user_vector("no-such-user") is None


def test_anchor_scores_exclude_anchors_and_match_factors(split, fitted):
    anchors = split[0].interactions.history(split[1]["user_id"].iloc[0])[:2]
    scores = fitted.score(anchors + ["no-such-item"])
    assert scores and not set(anchors) & set(scores)
    assert len(scores) == min(fitted.max_results, len(fitted.item_ids) - len(anchors))
    ids, matrix = fitted.item_vectors()
    query = matrix[[ids.index(a) for a in anchors]].mean(axis=0)
    best = next(iter(scores))
    assert scores[best] == pytest.approx(float(matrix[ids.index(best)] @ query), rel=1e-5)
    assert list(scores.values()) == sorted(scores.values(), reverse=True)


def test_user_scores_are_user_dot_item_factors_without_seen_items(split, fitted):
    user = split[1]["user_id"].iloc[0]
    seen = set(split[0].interactions.history(user))
    scores = fitted.score([], user)
    assert not seen & set(scores)
    ids, matrix = fitted.item_vectors()
    vector = fitted.user_vector(user)
    assert vector.shape == (CFSettings().als_factors,) and vector.dtype == np.float32
    item = next(iter(scores))
    assert scores[item] == pytest.approx(float(matrix[ids.index(item)] @ vector), rel=1e-5)


def test_event_weights_and_ignored_event_types(electronic):
    items = list(electronic.products)[:3]
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2"], "item_id": [items[0], items[0], items[1], items[2]],
                          "timestamp": [1, 2, 3, 4], "event": ["purchase", "view", "cart", "wishlist"]})
    scorer = ALSScorer(event_weights={"purchase": 1.0, "cart": 0.5, "view": 0.2})
    matrix = scorer.user_item_matrix(Interactions(frame).frame)
    assert scorer.user_ids == ["u1"], "an event type without a weight is ignored"
    dense = matrix.toarray()
    assert dense[0, scorer.item_ids.index(items[0])] == pytest.approx(1.2)
    assert dense[0, scorer.item_ids.index(items[1])] == pytest.approx(0.5)


def test_fold_in_new_user_matches_refit_factors(tmp_path, split, fitted):
    user = split[1]["user_id"].iloc[3]
    history = split[0].interactions.history(user)
    scorer = ALSScorer.load(fitted.save(tmp_path / "als.npz"))
    assert scorer.fold_in("brand-new-user", history) == len(set(history))
    folded, trained = scorer.user_vector("brand-new-user"), fitted.user_vector(user)
    cosine = float(folded @ trained / np.linalg.norm(folded) / np.linalg.norm(trained))
    assert cosine > 0.9
    assert not set(history) & set(scorer.score([], "brand-new-user"))

    before = scorer.user_vector(user)
    extra = [i for i in scorer.item_ids if i not in history][:3]
    assert scorer.fold_in(user, extra + ["no-such-item"], event="purchase") == 3
    assert not np.allclose(before, scorer.user_vector(user))
    assert not set(extra) & set(scorer.score([], user))


def test_save_load_roundtrip_and_seeded_fit(tmp_path, split, fitted):
    loaded = ALSScorer.load(fitted.save(tmp_path / "als.npz"))
    ids, matrix = fitted.item_vectors()
    ids2, matrix2 = loaded.item_vectors()
    assert ids2 == ids
    np.testing.assert_array_equal(matrix2, matrix)
    user = split[1]["user_id"].iloc[0]
    np.testing.assert_array_equal(loaded.user_vector(user), fitted.user_vector(user))
    assert loaded.score([], user) == fitted.score([], user)

    again = ALSScorer(CFSettings()).fit(split[0])
    np.testing.assert_allclose(again.item_vectors()[1], matrix, atol=1e-5)


def test_unfitted_scorer_says_so():
    with pytest.raises(NotFittedError, match="fit"):
        ALSScorer().score(["x"])


def test_batched_fold_in_equals_one_user_at_a_time(tmp_path, split, fitted):
    users = list(dict.fromkeys(split[1]["user_id"]))[:3]
    events = [(f"new-{u}", i, "purchase") for u in users for i in split[0].interactions.history(u)[:4]]
    one_by_one = ALSScorer.load(fitted.save(tmp_path / "a.npz"))
    for u in users:
        one_by_one.fold_in(f"new-{u}", [i for v, i, _ in events if v == f"new-{u}"])
    batched = ALSScorer.load(fitted.save(tmp_path / "b.npz"))
    assert batched.fold_in_many(events + [("new-empty", "no-such-item", "purchase")]) == len(events)
    for u in users:
        np.testing.assert_allclose(batched.user_vector(f"new-{u}"), one_by_one.user_vector(f"new-{u}"), atol=1e-5)
    assert batched.fold_in_many([("new-clicks", events[0][1], "click"), ("new-clicks", events[1][1], "return")]) == 0
    # no weighted event of a known item: no factors to learn, so the user stays unknown (content cold start) instead
    # of becoming a zero vector that ranks arbitrary products
    assert batched.user_vector("new-empty") is None and batched.user_vector("new-clicks") is None


def test_a_new_user_is_unknown_until_its_factors_exist(tmp_path, split, fitted, monkeypatch):
    """Requests read the scorer without the writers' lock: in the middle of a fold-in a new user must be either
    unknown or complete, never an index past the factor rows."""
    scorer = ALSScorer.load(fitted.save(tmp_path / "als.npz"))
    seen = []
    model = scorer._model
    original = model.partial_fit_users

    def reading_in_the_middle(users, items):
        seen.append((scorer.user_vector("late-user"), scorer.score([], "late-user")))
        return original(users, items)

    monkeypatch.setattr(model, "partial_fit_users", reading_in_the_middle)
    item = scorer.item_ids[0]
    assert scorer.fold_in("late-user", [item]) == 1
    assert seen == [(None, {})]
    assert scorer.user_vector("late-user") is not None


def test_load_takes_overrides_of_stored_options(tmp_path, fitted):
    loaded = ALSScorer.load(fitted.save(tmp_path / "als.npz"), seed=7, alpha=2.0)
    assert (loaded.seed, loaded.alpha) == (7, 2.0)
