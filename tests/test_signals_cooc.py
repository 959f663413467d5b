"""Co-occurrence signal: counts, complement discount, pruning, incremental groups."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rag_rec.data.models import Bundle, Dataset, Interactions, Product, Session
from rag_rec.signals.cooc import CooccurrenceScorer, group_windows, prune_rows


def tiny() -> Dataset:
    cat = {"cam": ("E", "Cameras"), "bat": ("E", "Batteries"), "bat2": ("E", "Batteries"), "bag": ("E", "Bags")}
    products = {i: Product(i, i, c) for i, c in cat.items()}
    sessions = {"s1": Session("s1", ("cam", "bat")), "s2": Session("s2", ("cam", "bat", "bag")),
                "s3": Session("s3", ("bat", "bat2"))}
    return Dataset("tiny", products, sessions=sessions, bundles=[Bundle("b", ("cam", "bag"))])


def test_counts_and_evidence():
    c = CooccurrenceScorer().fit(tiny())
    assert c.evidence(["cam"], "bat") == 2
    assert c.evidence(["cam"], "bag") == 2          # one session + one bundle (weighted 2 in the scores only)
    bag = np.array([c.vocab.index["bag"]])
    assert c.counts_with(c.vocab.known(["cam"]), bag)[0] == 3 and c.bundle_surplus(c.vocab.known(["cam"]), bag, 0) == 1
    scores = c.score(["cam"])
    assert "cam" not in scores and scores["bag"] > scores["bat"]


def test_complement_discounts_same_leaf():
    plain = CooccurrenceScorer().fit(tiny()).score(["bat"])
    comp = CooccurrenceScorer(complement=True, substitute_discount=0.5).fit(tiny()).score(["bat"])
    assert comp["bat2"] == plain["bat2"] * 0.5 and comp["cam"] == plain["cam"]


def test_prune_rows_keeps_strongest_partners():
    m = sp.random(40, 40, density=0.5, format="csr", random_state=1)
    p = prune_rows(m, 4)
    assert np.diff(p.indptr).max() == 4
    for row in (0, 13, 39):
        full, kept = m[row].toarray().ravel(), p[row].toarray().ravel()
        assert set(np.flatnonzero(kept)) == set(np.argsort(-full)[:4])


def test_incremental_groups_add_counts():
    ds = tiny()
    c = CooccurrenceScorer().fit(ds)
    c.add_groups([("bat2", "bag")], ds)
    assert c.evidence(["bat2"], "bag") == 1


def test_incremental_groups_equal_a_refit_and_survive_compaction():
    rng = np.random.default_rng(4)
    ids = [f"i{n}" for n in range(60)]
    products = {i: Product(i, i, ("E", f"c{n % 7}")) for n, i in enumerate(ids)}
    groups = [tuple(rng.choice(ids, size=rng.integers(2, 6), replace=False)) for _ in range(300)]
    first, later = groups[:200], groups[200:]
    full = Dataset("full", products, sessions={f"s{n}": Session(f"s{n}", g) for n, g in enumerate(groups)})
    base = Dataset("base", products, sessions={f"s{n}": Session(f"s{n}", g) for n, g in enumerate(first)})
    refit = CooccurrenceScorer(complement=True).fit(full)
    inc = CooccurrenceScorer(complement=True).fit(base)
    for start in range(0, len(later), 7):
        inc.add_groups(later[start:start + 7], base)
    pool = np.arange(60)
    for anchors in ([0], [3, 17], [59]):
        assert np.allclose(inc.score_pool(anchors, pool), refit.score_pool(anchors, pool))
        got_cols, got_vals = inc.top_partners(anchors, 10)
        want_cols, want_vals = refit.top_partners(anchors, 10)
        assert list(got_cols) == list(want_cols) and np.allclose(got_vals, want_vals)
    assert inc._overlay                                   # rows changed since the fit live in the overlay
    assert (inc.cooc != refit.cooc).nnz == 0 and not inc._overlay   # folding it in gives the refit matrix
    assert np.allclose(inc.score_pool([3, 17], pool), refit.score_pool([3, 17], pool))


def test_group_windows_cut_distinct_items_in_order():
    assert group_windows(("a", "b", "a", "c", "d", "e"), 2) == [("a", "b"), ("c", "d"), ("e",)]
    assert group_windows(("a", "b", "a"), None) == [("a", "b")]
    assert group_windows(("a", "b"), 2) == [("a", "b")]


def test_a_crawler_session_is_counted_in_windows():
    ids = [f"i{n}" for n in range(3000)]
    products = {i: Product(i, i, ("E", "c")) for i in ids}
    ds = Dataset("crawl", products, sessions={"bot": Session("bot", tuple(ids)), "s": Session("s", ("i0", "i2999"))})
    c = CooccurrenceScorer(max_group_items=100, max_partners=None).fit(ds)
    assert c.cooc.nnz == 30 * 100 * 99 + 2     # 30 windows' pairs and the short session's pair; unwindowed: 9.0M
    assert c.evidence(["i0"], "i99") == 1 and c.evidence(["i0"], "i100") == 0 and c.evidence(["i0"], "i2999") == 1
    assert c.counts[c.vocab.index["i5"]] == 1 and c.counts[c.vocab.index["i0"]] == 2


def sessionless(histories: dict[str, list[str]], n_items: int) -> Dataset:
    products = {f"i{n}": Product(f"i{n}", f"i{n}", ("E", f"c{n % 5}")) for n in range(n_items)}
    rows = [{"user_id": u, "item_id": i, "timestamp": t} for u, items in histories.items() for t, i in enumerate(items)]
    return Dataset("shop", products, interactions=Interactions(pd.DataFrame(rows)))


@pytest.mark.parametrize("window", [6, None])
def test_extending_user_groups_equals_a_refit(window):
    rng = np.random.default_rng(7)
    n_items = 80
    final = {f"u{u}": list(rng.choice(n_items, size=rng.integers(1, 30))) for u in range(12)}
    final = {u: [f"i{n}" for n in items] for u, items in final.items()}
    cut = {u: int(rng.integers(0, len(items) + 1)) for u, items in final.items()}
    base = sessionless({u: items[:cut[u]] for u, items in final.items()}, n_items)
    inc = CooccurrenceScorer(max_group_items=window, max_partners=None).fit(base)
    assert inc.user_groups
    history = {u: list(dict.fromkeys(items[:cut[u]])) for u, items in final.items()}
    for step in range(3):   # the rest of each history in three batches, as API events would come
        extensions = []
        for u, items in final.items():
            rest = items[cut[u]:]
            new = rest[step * len(rest) // 3:(step + 1) * len(rest) // 3]
            extensions.append((tuple(history[u]), tuple(new)))
            history[u] = list(dict.fromkeys(history[u] + new))
        inc.extend_groups(extensions, base)
    refit = CooccurrenceScorer(max_group_items=window, max_partners=None).fit(sessionless(final, n_items))
    assert (inc.cooc != refit.cooc).nnz == 0
    assert np.array_equal(inc.counts, refit.counts)
    if window:
        unwindowed = CooccurrenceScorer(max_partners=None).fit(sessionless(final, n_items))
        assert (unwindowed.cooc != refit.cooc).nnz > 0    # the windows changed which pairs count


def test_pool_scores_equal_whole_vocabulary_scores():
    from rag_rec.signals.category import CategoryAffinity

    ds = tiny()
    ds.products["nocat"] = Product("nocat", "nocat", ())
    cooc = CooccurrenceScorer(complement=True).fit(ds)
    cat = CategoryAffinity(depth=2).fit(ds, cooc.vocab)
    pool = np.arange(len(cooc.vocab))
    for anchors in (["cam"], ["bat"], ["cam", "bag"]):
        idx = cooc.vocab.known(anchors)
        others = np.setdiff1d(pool, idx)  # the whole-vocabulary scores rule the anchors out (-inf)
        np.testing.assert_allclose(cooc.score_pool(idx, pool)[others], cooc.score_vector(anchors)[others], atol=1e-5)
        np.testing.assert_allclose(cat.score_pool(idx, pool)[others], cat.score_vector(anchors)[others], atol=1e-9)
        weighted = cooc.counts_with(idx, pool)
        assert [round(w - cooc.bundle_surplus(idx, pool, j)) for j, w in enumerate(weighted)] == [
            sum(cooc.evidence([a], i) for a in anchors) for i in cooc.vocab.ids]
    assert cat.score_pool(cooc.vocab.known(["cam"]), pool)[cooc.vocab.index["nocat"]] == 0.0


def test_updates_publish_counts_with_their_norms_so_no_reader_computes_them():
    ds = tiny()
    c = CooccurrenceScorer().fit(ds)
    c._norms()
    ds.products["tripod"] = Product("tripod", "tripod", ("E", "Tripods"))
    for update in (lambda: c.add_groups([("bat2", "bag")], ds), lambda: c.add_groups([("cam", "tripod")], ds)):
        before = c.counts
        update()
        cached_counts, norms = c._norm_cache
        assert c.counts is not before and cached_counts is c.counts  # computed by the writer
        np.testing.assert_allclose(norms, c.counts ** c.alpha)
        assert c._norms() is norms and len(norms) == len(c.vocab)
        np.testing.assert_allclose(c.popularity, c.counts / c.counts.max())


def test_category_pairs_count_each_group_once_and_leave_out_a_category_paired_with_itself():
    from itertools import permutations

    from rag_rec.signals.category import CategoryAffinity

    ds = tiny()
    cooc = CooccurrenceScorer().fit(ds)
    cat = CategoryAffinity(depth=2).fit(ds, cooc.vocab)
    groups = list(ds.item_sets())
    pool = np.arange(len(cooc.vocab))
    for update in (None, [("bat", "bat2", "cam"), ("bag", "bag")]):
        if update:
            cat.add_groups(update)
            groups += update
        n = len(cat.codes)
        by_hand, count = np.zeros((n, n)), np.zeros(n)
        for group in groups:
            codes = {int(cat.item_code[cooc.vocab.index[i]]) for i in group}
            count[list(codes)] += 1
            for a, b in permutations(codes, 2):
                by_hand[a, b] += 1
        np.testing.assert_array_equal(cat.pair.toarray(), by_hand)
        np.testing.assert_array_equal(cat.count, count)
        for anchors in (["cam"], ["bat"], ["cam", "bag"], ["cam", "cam"]):
            idx = cooc.vocab.known(anchors)
            codes = [int(cat.item_code[i]) for i in idx]
            want = by_hand[codes].sum(axis=0) / (count[codes].sum() + 1.0)
            want[codes] += cat.same_bonus
            np.testing.assert_allclose(cat.score_pool(idx, pool), want[cat.item_code[pool]])
        assert cat.pair.has_sorted_indices
