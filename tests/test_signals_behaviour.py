"""Transformer behaviour model on the real Amazon electronic histories and sessions."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from rag_rec.data.models import Dataset, Interactions, Session
from rag_rec.errors import ModelError
from rag_rec.settings import BehaviourSettings
from rag_rec.signals.base import ItemScorer
from rag_rec.signals.behaviour import BehaviourModel

K = 20


def leave_last_out(dataset: Dataset, min_events: int = 3) -> tuple[Dataset, pd.DataFrame]:
    """Train data without each user's last event, removed from their sessions too (no leak), and the events."""
    frame = dataset.interactions.frame
    counts = frame.groupby("user_id").size()
    last = frame.groupby("user_id").tail(1)
    last = last[last["user_id"].map(counts) >= min_events]
    held = set(zip(last["user_id"], last["item_id"]))
    sessions = {sid: Session(s.id, tuple(i for i in s.items if (s.user_id, i) not in held), s.user_id, s.timestamp)
                for sid, s in dataset.sessions.items()}
    train = Dataset(dataset.name, dataset.products, Interactions(frame.drop(index=last.index).copy()), sessions)
    return train, last


def hit_rate(model: BehaviourModel, held_out: pd.DataFrame) -> float:
    return float(np.mean([target in list(model.score([], user))[:K]
                          for user, target in zip(held_out["user_id"], held_out["item_id"])]))


@pytest.fixture(scope="module")
def split(electronic):
    return leave_last_out(electronic)


@pytest.fixture(scope="module")
def trained(split):
    start = time.perf_counter()
    model = BehaviourModel(BehaviourSettings(), progress=False).fit(split[0])
    model.train_seconds = time.perf_counter() - start
    return model


@pytest.mark.slow
def test_loss_decreases_and_hit_rate_beats_random(split, trained):
    train, held_out = split
    assert isinstance(trained, ItemScorer)
    assert len(trained.loss_history) == BehaviourSettings().epochs
    assert trained.loss_history[-1] < trained.loss_history[0] - 1.0
    hr = hit_rate(trained, held_out)
    popularity = train.interactions.frame["item_id"].value_counts()
    rng = np.random.default_rng(0)
    p = (popularity / popularity.sum()).to_numpy(dtype=float)
    pop_random = float(np.mean([np.mean([t in set(rng.choice(popularity.index.to_numpy(), K, replace=False, p=p))
                                         for t in held_out["item_id"]]) for _ in range(20)]))
    print(f"behaviour: trained in {trained.train_seconds:.1f}s, loss {trained.loss_history[0]:.3f} -> "
          f"{trained.loss_history[-1]:.3f}, HR@{K} {hr:.4f} vs random {K / len(trained.item_ids):.4f}, "
          f"popularity-random {pop_random:.4f} over {len(held_out)} users")
    assert hr > K / len(trained.item_ids)
    assert hr > pop_random
    assert trained.train_seconds < 240


@pytest.mark.slow
def test_items_no_training_sequence_held_are_unknown_to_the_model(split, trained):
    """An item training never saw keeps its initial vector, which the tied output layer ranked above trained items;
    in an offline split that singled out the held-out sessions' items. The model knows only what it trained on."""
    train = split[0]
    held = {i for h in trained.histories.values() if len(h) >= 2 for i in h}
    held |= {i for s in train.sessions.values() if len([x for x in s.items if x in train.products]) >= 2
             for i in s.items}
    assert set(trained.item_ids) <= held and len(trained.item_ids) < len(train.products)
    never = next(i for i in train.products if i not in set(trained.item_ids))
    user = next(iter(trained.histories))
    assert never not in trained.score([], user)
    assert trained.user_vector([never]) is None
    assert list(trained.scaled_scores([trained.item_ids[0]], None, [never, trained.item_ids[1]]))[0] == 0.0
    assert len(trained.score([trained.item_ids[0]], None)) == trained.max_results


@pytest.mark.slow
def test_vectors_share_one_space_and_scores_follow_them(split, trained):
    user = split[1]["user_id"].iloc[0]
    history = trained.histories[user]
    anchors = [i for i in split[0].products if i not in history][:1]
    ids, matrix = trained.item_vectors()
    assert matrix.shape == (len(trained.item_ids), trained.dim) and trained.dim == BehaviourSettings().dim + 1
    query = trained.user_vector(history + anchors)
    assert query.dtype == np.float32 and query.shape == (trained.dim,)
    scores = trained.score(anchors, user)
    assert scores and not (set(history) | set(anchors)) & set(scores)
    best = next(iter(scores))
    assert scores[best] == pytest.approx(float(matrix[ids.index(best)] @ query), rel=1e-4, abs=1e-4)
    assert scores[best] == pytest.approx(float(np.max(np.delete(matrix @ query, [ids.index(i) for i in
                                                                                  history + anchors]))), rel=1e-4)
    # Anchors change the context: the anchored ranking differs from the user's alone.
    assert list(scores)[:K] != list(trained.score([], user))[:K]


@pytest.mark.slow
@pytest.mark.parametrize("filter_seen", [True, False])
def test_scaled_scores_are_score_min_max_scaled_for_the_pool_alone(split, trained, filter_seen, monkeypatch):
    """The served feature: score()'s logits of a pool, scaled over the catalogue's best max_results (not over the
    pool), 0 outside them and for what must not be scored; the catalogue scan is remembered per sequence."""
    monkeypatch.setattr(trained, "filter_seen", filter_seen)
    user = split[1]["user_id"].iloc[0]
    history = trained.histories[user]
    anchors = [i for i in split[0].products if i not in history][:1]
    full = trained.score(anchors, user)
    ranked = list(full)
    assert len(ranked) == trained.max_results
    hi, lo = full[ranked[0]], full[ranked[-1]]
    outside = next(i for i in trained.item_ids if i not in full and i not in history and i not in anchors)
    pool = [ranked[5], ranked[0], ranked[-1], ranked[400], outside, anchors[0], "no-such-item", history[0]]
    scaled = trained.scaled_scores(anchors, user, pool)
    want = [(full[i] - lo) / (hi - lo) for i in pool[:4]]
    np.testing.assert_allclose(scaled[:4], want, rtol=1e-4, atol=1e-4)
    assert scaled[1] == pytest.approx(1.0) and scaled[2] == pytest.approx(0.0, abs=1e-4)
    assert list(scaled[4:7]) == [0.0, 0.0, 0.0]  # below the best max_results, the anchor, an unknown item
    assert (scaled[7] == 0.0) == (filter_seen or history[0] not in full)
    assert trained.scaled_scores(anchors, user, pool[:4]) == pytest.approx(scaled[:4])  # not the pool's own range
    assert trained.scaled_scores(["no-such-item"], "no-such-user", pool) is None


@pytest.mark.slow
@pytest.mark.parametrize("max_results", [1000, 7, None])
def test_the_compiled_catalogue_range_equals_the_numpy_one(trained, monkeypatch, max_results):
    from rag_rec.signals import behaviour

    assert behaviour._range_kernel() is not None, "numba comes with the fast extra, which the README's set-up installs"
    monkeypatch.setattr(trained, "max_results", max_results)
    sequences = [tuple(range(1, 6)), (3,), tuple(range(40, 60))]
    excluded = [(), (2, 4, 100), tuple(range(0, len(trained.item_ids), 3))]
    compiled = [trained._range(s, e) for s in sequences for e in excluded]
    monkeypatch.setattr(behaviour, "_range_kernel", lambda: None)
    reference = [trained._range(s, e) for s in sequences for e in excluded]
    np.testing.assert_allclose(compiled, reference, rtol=1e-5, atol=1e-5)
    assert trained._range((1,), tuple(range(len(trained.item_ids)))) == (np.inf, np.inf)  # nothing left to rank


@pytest.mark.parametrize("layers,heads", [(2, 2), (1, 4), (3, 1)])
def test_the_numpy_inference_equals_the_torch_network(layers, heads):
    torch = pytest.importorskip("torch")
    from rag_rec.signals.behaviour import _build_network, _NumpyEncoder

    torch.manual_seed(layers)
    settings = BehaviourSettings(dim=16, heads=heads, layers=layers, max_len=9)
    net = _build_network(60, settings, dropout=0.5)
    with torch.no_grad():  # trained-looking weights: biases and norms away from their initial 0 and 1
        for name, parameter in net.named_parameters():
            if "bias" in name or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    net.eval()
    encoder = _NumpyEncoder(net)
    rng = np.random.default_rng(layers)
    for length in range(1, 10):
        encoded = tuple(int(i) for i in rng.integers(1, 61, length))
        with torch.inference_mode():
            want = net(torch.tensor([encoded]))[0, -1].numpy()
        got = encoder.last_hidden(encoded)
        assert got.dtype == np.float32 and got.shape == (16,)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("m", [1000, 7, 40])
def test_the_quantized_catalogue_scan_is_exact(trained, monkeypatch, m):
    """The int8 first pass only decides which rows are scored in float32: its answer is the full scan's, to the bit,
    with and without excluded rows, and when the sample's threshold cannot hold (m near the catalogue's size)."""
    from rag_rec.signals import behaviour

    full, quantized = behaviour._range_kernel()
    matrix, codes, scales = trained._item_matrix, trained._codes, trained._scales
    assert codes.dtype == np.int8 and np.all(np.abs(codes * scales[:, None] - matrix) <= scales[:, None] / 2 + 1e-7)
    rng = np.random.default_rng(m)
    for sequence in [tuple(range(1, 6)), (3,), tuple(range(40, 60)), tuple(rng.integers(1, 500, 20))]:
        query = trained._encode(tuple(int(i) for i in sequence))
        for excluded in (np.zeros(0, dtype=np.int64), np.array(sorted(rng.choice(len(matrix), 30, replace=False)))):
            assert quantized(codes, scales, matrix, query, excluded, m, 16) == full(matrix, query, excluded, m)
    near_all = len(matrix) - 5
    query = trained._encode((1, 2))
    assert quantized(codes, scales, matrix, query, np.zeros(0, dtype=np.int64), near_all, 16) == full(
        matrix, query, np.zeros(0, dtype=np.int64), near_all)
    monkeypatch.setattr(trained, "quantized_scan_from", 0)
    trained._catalogue_range.cache_clear()
    monkeypatch.setattr(trained, "max_results", m)
    assert trained._range((4, 5), (2,)) == tuple(float(v) for v in full(matrix, trained._encode((4, 5)),
                                                                         np.array([2]), m))


@pytest.mark.slow
def test_a_repeated_sequence_reuses_its_vector_and_a_refit_forgets_it(split):
    model = BehaviourModel(BehaviourSettings(epochs=1), progress=False, query_cache=2).fit(split[0])
    items = list(split[0].products)[:3]
    first = model.user_vector(items)
    assert model.user_vector(["no-such-item", *items]) is first  # the same known sequence
    assert not first.flags.writeable
    model.user_vector(items[:1]), model.user_vector(items[:2])  # two others fill the cache of two
    again = model.user_vector(items)
    assert again is not first
    np.testing.assert_array_equal(again, first)
    model.settings = BehaviourSettings(epochs=1, seed=1)
    model.fit(split[0])
    assert not np.array_equal(model.user_vector(items), first)  # new weights, not the old vector


@pytest.mark.slow
def test_unknown_users_and_items_give_empty_scores(trained):
    assert trained.score(["no-such-item"], "no-such-user") == {}
    assert trained.score([], None) == {}
    assert trained.user_vector(["no-such-item"]) is None
    assert trained.score([next(iter(trained.item_ids))], "no-such-user"), "known anchors alone suffice"


@pytest.mark.slow
def test_save_load_roundtrip_gives_identical_vectors(tmp_path, split, trained):
    loaded = BehaviourModel.load(trained.save(tmp_path / "behaviour.pt"), progress=False)
    ids, matrix = trained.item_vectors()
    ids2, matrix2 = loaded.item_vectors()
    assert ids2 == ids
    np.testing.assert_array_equal(matrix2, matrix)
    history = trained.histories[split[1]["user_id"].iloc[1]]
    np.testing.assert_array_equal(loaded.user_vector(history), trained.user_vector(history))
    assert loaded.loss_history == trained.loss_history
    user = split[1]["user_id"].iloc[1]
    assert loaded.score([], user) == trained.score([], user)


@pytest.mark.slow
def test_sampled_softmax_trains_and_training_is_seeded(electronic):
    settings = BehaviourSettings(dim=32, layers=1, epochs=3, seed=7)
    first = BehaviourModel(settings, sampled_softmax_above=0, negatives=256, progress=False).fit(electronic)
    assert all(np.isfinite(first.loss_history))
    assert first.loss_history[-1] < first.loss_history[0]
    second = BehaviourModel(settings, sampled_softmax_above=0, negatives=256, progress=False).fit(electronic)
    np.testing.assert_array_equal(first.item_vectors()[1], second.item_vectors()[1])


def test_long_sequences_become_windows_covering_every_transition():
    model = BehaviourModel(BehaviourSettings(max_len=4))
    sequence = list(range(1, 12))
    inputs, targets = model._windows([sequence, [20, 21]])
    pairs = {(int(a), int(b)) for row_in, row_out in zip(inputs, targets)
             for a, b in zip(row_in, row_out) if b != 0}
    assert pairs == {(a, a + 1) for a in range(1, 11)} | {(20, 21)}
    assert inputs.shape[1] == 4 and (inputs[:, 0] != 0).all()


def test_heads_must_divide_the_model_width():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="multiple of behaviour.heads"):
        BehaviourSettings(dim=64, heads=3)


def test_histories_of_one_item_leave_the_service_without_a_behaviour_model():
    from rag_rec.settings import Settings
    from rag_rec.signals.suite import fit_signals

    ds = tiny_shop(4, {"a": ["p0"], "b": ["p1"]}, name="one-each")
    signals = fit_signals(ds, Settings(embedding={"cache_path": None}), text=False, behaviour=True)
    assert signals.behaviour is None and signals.als is not None


@pytest.mark.slow
def test_served_behaviour_model_reads_histories_extended_by_api_events(tmp_path):
    from test_journal import open_pipeline, write_shop

    from rag_rec.retrieve.base import RetrievalRequest
    from rag_rec.schemas import EventIn, EventsIn

    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path, behaviour={"serve": True, "epochs": 2, "cache_dir": tmp_path / "networks"})
    try:
        model = pipeline.signals.behaviour
        assert model is not None
        assert model.score([], "newbie") == {}
        pipeline.add_events(EventsIn(events=[EventIn(user_id="newbie", item_id="p1", timestamp=1700000100),
                                             EventIn(user_id="newbie", item_id="p8", timestamp=1700000101)]))
        assert model.histories["newbie"] == ["p1", "p8"]
        assert model.score([], "newbie")
        result = pipeline.retriever.retrieve(RetrievalRequest(user_id="newbie", anchors=("p2",), k=10))
        assert any("behaviour" in c.sources for c in result.candidates)
    finally:
        pipeline.close()


@pytest.mark.slow
def test_a_start_on_unchanged_data_loads_the_network_an_earlier_start_trained(split, tmp_path, monkeypatch):
    train = split[0]
    settings = BehaviourSettings(epochs=1)
    first = BehaviourModel(settings, progress=False).fit_cached(train, tmp_path)
    [kept] = tmp_path.glob("behaviour-*.pt")
    assert not list(tmp_path.glob("*.partial"))

    def no_training(self, dataset):
        raise AssertionError("trained although an equal network was kept")

    monkeypatch.setattr(BehaviourModel, "fit", no_training)
    logs = []
    again = BehaviourModel(settings, progress=False).fit_cached(train, tmp_path, log=logs.append)
    assert "loaded" in logs[0]
    np.testing.assert_array_equal(again.item_vectors()[1], first.item_vectors()[1])
    user = next(iter(first.histories))
    assert again.score([], user) == first.score([], user)
    with pytest.raises(AssertionError, match="trained although"):  # other settings: another network
        BehaviourModel(BehaviourSettings(epochs=2), progress=False).fit_cached(train, tmp_path)
    frame = train.interactions.frame
    more = Dataset(train.name, train.products, Interactions(pd.concat([frame, frame.tail(1)], ignore_index=True)),
                   train.sessions)
    with pytest.raises(AssertionError, match="trained although"):  # one more event: another network
        BehaviourModel(settings, progress=False).fit_cached(more, tmp_path)


@pytest.mark.slow
def test_an_unreadable_kept_network_is_trained_over_and_an_unwritable_cache_costs_only_the_next_fit(split, tmp_path):
    train = split[0]
    settings = BehaviourSettings(epochs=1)
    model = BehaviourModel(settings, progress=False).fit_cached(train, tmp_path)
    [kept] = tmp_path.glob("behaviour-*.pt")
    kept.write_bytes(b"not a network")
    logs = []
    retrained = BehaviourModel(settings, progress=False).fit_cached(train, tmp_path, log=logs.append)
    assert "cannot read" in logs[0] and "training again" in logs[0]
    np.testing.assert_allclose(retrained.item_vectors()[1], model.item_vectors()[1], atol=1e-6)
    assert BehaviourModel.load(kept).item_ids == model.item_ids  # replaced by the new fit
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    logs.clear()
    served = BehaviourModel(settings, progress=False).fit_cached(train, blocked, log=logs.append)
    assert served.score([], next(iter(served.histories))) and "cannot keep" in logs[0]


def test_the_training_key_follows_what_training_reads_and_nothing_else():
    from rag_rec.data.models import Product

    products = {f"p{n}": Product(f"p{n}", f"lamp {n}", ("Lamps",)) for n in range(4)}
    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["p0", "p1", "p2"], "timestamp": [1, 2, 3],
                          "event": "purchase"})
    sessions = {"s": Session("s", ("p1", "p2"), "a", 1)}
    base = Dataset("shop", products, Interactions(frame), sessions)
    key = BehaviourModel(BehaviourSettings()).training_key(base)
    assert BehaviourModel(BehaviourSettings(serve=True, cache_dir=None)).training_key(base) == key
    assert BehaviourModel(BehaviourSettings(seed=1)).training_key(base) != key
    assert BehaviourModel(BehaviourSettings(), dropout=0.3).training_key(base) != key
    changed = [
        Dataset("shop", dict(reversed(products.items())), Interactions(frame), sessions),
        Dataset("shop", products, Interactions(frame.assign(item_id=["p0", "p1", "p3"])), sessions),
        Dataset("shop", products, Interactions(frame), {"s": Session("s", ("p2", "p1"), "a", 1)}),
    ]
    assert all(BehaviourModel(BehaviourSettings()).training_key(ds) != key for ds in changed)


def tiny_shop(n_products: int = 12, users: dict | None = None, name: str = "tiny") -> Dataset:
    from rag_rec.data.models import Product

    products = {f"p{n}": Product(f"p{n}", f"lamp {n}", ("Lamps",)) for n in range(n_products)}
    users = users or {"a": ["p0", "p1", "p2", "p3"], "b": ["p1", "p2", "p4"], "c": ["p5", "p6", "p7"]}
    pairs = [(u, i) for u, items in users.items() for i in items]
    frame = pd.DataFrame({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                          "timestamp": range(len(pairs)), "event": "purchase"})
    return Dataset(name, products, Interactions(frame), {})


def tiny_model(**settings) -> BehaviourModel:
    return BehaviourModel(BehaviourSettings(**{"dim": 8, "heads": 2, "layers": 1, "max_len": 4, "epochs": 1,
                                               "cache_dir": None, **settings}), progress=False)


def test_a_failed_refit_leaves_the_model_serving_what_it_served():
    model = tiny_model().fit(tiny_shop())
    before = (list(model.item_ids), model.score([], "a"), model.score(["p1"]))
    with pytest.raises(Exception, match="no sequence"):
        model.fit(tiny_shop(30, {"a": ["p20"], "z": ["p29"]}, name="other"))
    assert (model.item_ids, model.score([], "a"), model.score(["p1"])) == before


def test_items_only_in_windows_no_epoch_drew_are_unknown_to_the_model():
    users = {f"u{n}": [f"p{2 * n}", f"p{2 * n + 1}"] for n in range(40)}
    model = tiny_model(max_windows_per_epoch=5, epochs=2).fit(tiny_shop(80, users))
    assert 2 <= len(model.item_ids) <= 2 * 5 * 2  # at most 5 two-item windows an epoch
    never = next(i for i in users["u0"] + users["u1"] + users["u2"] + users["u3"] + users["u4"] + users["u5"]
                 if i not in set(model.item_ids))
    assert model.user_vector([never]) is None and never not in model.score([], next(iter(users)))


def test_a_network_cache_that_cannot_be_written_costs_only_the_next_fit():
    """torch reports a failed open or write of its file as RuntimeError, not OSError; /proc/self takes no new files,
    for root too."""
    logs = []
    model = tiny_model().fit_cached(tiny_shop(), "/proc/self", log=logs.append)
    assert model.score([], "a") and "cannot keep" in logs[0]


def test_a_damaged_kept_network_is_trained_over(tmp_path):
    """A flipped byte in a tensor loads silently through torch.load (it does not check the archive's checksums), and
    some flips in the pickle raise KeyError; both read as unreadable and are trained over."""
    import struct
    import zipfile

    shop = tiny_shop()
    fresh = tiny_model().fit_cached(shop, tmp_path)
    [kept] = tmp_path.glob("behaviour-*.pt")
    with zipfile.ZipFile(kept) as archive:
        entry = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size >= 16)
    raw = bytearray(kept.read_bytes())
    name_length, extra_length = struct.unpack_from("<HH", raw, entry.header_offset + 26)  # the local header's
    raw[entry.header_offset + 30 + name_length + extra_length + 8] ^= 0xFF
    kept.write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="checksum"):
        BehaviourModel.load(kept)
    logs = []
    again = tiny_model().fit_cached(shop, tmp_path, log=logs.append)
    assert "training again" in logs[0]
    np.testing.assert_allclose(again.item_vectors()[1], fresh.item_vectors()[1], atol=1e-6)


def test_rows_scaled_below_the_smallest_normal_float_are_scanned_exactly(monkeypatch):
    """The int8 pre-pass bounds each element within scale / 2, which needs normal-range scales: a subnormal scale
    rounds to whole units of 2**-149 and clips codes, so the pre-pass would drop the true best rows."""
    model = tiny_model().fit(tiny_shop())
    model.quantized_scan_from = 0
    unit = np.float32(2.0 ** -149)
    matrix = np.full((4000, model.dim), 140 * unit, dtype=np.float32)
    matrix[:, 0] = 254 * unit
    matrix[7::50] = 190 * unit
    model._use_item_matrix(matrix)
    query = np.full(model.dim, 1e30, dtype=np.float32)
    monkeypatch.setattr(model, "_encoded_vector", lambda encoded: query)
    scores = np.sort(matrix.astype(np.float64) @ query.astype(np.float64))[::-1]
    for m in (10, 50, 80):
        model.max_results = m
        best, last = model._range((1,), ())
        assert (best, last) == pytest.approx((scores[0], scores[m - 1]), rel=1e-5, abs=0)
