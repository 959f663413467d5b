"""Each metric on hand-computed cases, including AICL's recall > 1 quirk."""

import math

import numpy as np
import pytest

from rag_rec.eval import metrics as M


def test_aicl_precision_recall_coverage_by_hand():
    truth = [["a", "b", "c", "d"], ["e", "f"]]
    predicted = [["a", "b"], ["e", "f"], ["c", "x"]]
    p, r, c = M.aicl_session_scores(predicted, truth)
    assert p == pytest.approx(2 / 3)           # {a,b} and {e,f} are subsets; {c,x} is not
    assert r == pytest.approx(2 / 2)
    assert c == pytest.approx((2 / 4 + 2 / 2) / 2)


def test_aicl_recall_can_exceed_one_but_one_to_one_cannot():
    truth = [["a", "b", "c", "d"]]
    predicted = [["a", "b"], ["c", "d"]]       # two predictions hit the same true bundle
    p, r, c = M.aicl_session_scores(predicted, truth)
    assert (p, r) == (1.0, 2.0) and c == pytest.approx(0.5)
    p1, r1, c1 = M.one_to_one_scores(predicted, truth)
    assert (p1, r1, c1) == (0.5, 1.0, 0.5)


def test_one_to_one_prefers_the_covering_match():
    truth = [["a", "b", "c"], ["a", "b"]]
    predicted = [["a", "b"]]
    p1, r1, c1 = M.one_to_one_scores(predicted, truth)
    assert (p1, r1, c1) == (1.0, 0.5, 1.0)     # matched to {a,b} exactly (coverage 1), not {a,b,c}
    p, r, c = M.aicl_session_scores(predicted, truth)
    assert c == pytest.approx(2 / 3)            # AICL takes the first true bundle it finds


def test_empty_prediction_and_exact_and_jaccard():
    truth = [["a", "b", "c"], ["d", "e"]]
    assert M.aicl_session_scores([], truth) == (0.0, 0.0, 0.0)
    predicted = [["d", "e"], ["a", "b"]]
    assert M.exact_match_rate(predicted, truth) == 0.5
    assert M.mean_best_jaccard(predicted, truth) == pytest.approx((2 / 3 + 1.0) / 2)
    with pytest.raises(ValueError):
        M.aicl_session_scores(predicted, [])


def test_rank_auc_recall_ndcg_mrr():
    scores = np.array([0.9, 0.5, 0.7, 0.1, -np.inf])
    rank, auc = M.rank_of(scores, 2)            # 0.7 is second of 4 finite scores
    assert rank == 2 and auc == pytest.approx(1 - 1 / 3)
    assert M.recall_at(rank, 1) == 0.0 and M.recall_at(rank, 2) == 1.0
    assert M.ndcg_at(rank, 10) == pytest.approx(1 / math.log2(3))
    assert M.ndcg_at(11, 10) == 0.0
    assert M.mrr(rank) == 0.5
    tied = np.array([1.0, 1.0, 1.0])
    assert M.rank_of(tied, 0) == (2.0, 0.5)  # the expected rank under a random tie-break, not the best case


def test_tied_targets_get_the_expected_metrics_not_the_best_case():
    placed = M.tied_rank(np.zeros(100), 42)  # a constant scorer
    assert (placed.higher, placed.ties, placed.rank) == (0, 99, 50.5)
    assert placed.recall_at(1) == pytest.approx(0.01) and placed.recall_at(10) == pytest.approx(0.1)
    assert placed.ndcg_at(10) == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 100)
    assert placed.mrr() == pytest.approx(sum(1 / r for r in range(1, 101)) / 100)
    single = M.tied_rank(np.array([0.9, 0.5, 0.7, 0.1]), 2)
    assert single.recall_at(1) == 0.0 and single.recall_at(2) == 1.0 and single.mrr() == 0.5


@pytest.mark.parametrize("target_score", [-np.inf, np.nan])
def test_a_target_without_a_finite_score_ranks_last(target_score):
    placed = M.tied_rank(np.array([0.9, 0.5, target_score, 0.1]), 2)
    assert placed.rank == 4 and placed.auc == 0.0 and placed.recall_at(3) == 0.0


def test_one_to_one_matching_finds_the_most_matches():
    truth = [list("abcdef"), list("abcghij")]
    p, r, c = M.one_to_one_scores([list("abc"), list("de")], truth)  # greedy matched abc to abcdef and stopped
    assert (p, r) == (1.0, 1.0) and c == pytest.approx((2 / 6 + 3 / 7) / 2)


def test_duplicate_rate_is_a_share_of_bundles():
    from rag_rec.eval.tasks import _duplicate_rate

    assert _duplicate_rate([("a", "a", "b")]) == 1.0
    assert _duplicate_rate([("a", "b"), ("b", "c"), ("d", "e")]) == pytest.approx(2 / 3)
    assert _duplicate_rate([]) == 0.0


def test_rouge_on_intents():
    pytest.importorskip("rouge_score")
    s = M.rouge_scores("camera accessories", "Camera accessories")
    assert s["rouge1"] == pytest.approx(1.0) and s["rougeL"] == pytest.approx(1.0)
    assert M.rouge_scores("kitchen knives", "camera battery")["rouge1"] == 0.0


def test_items_a_scorer_leaves_out_rank_below_its_negative_scores():
    from rag_rec.data.models import Dataset, Product
    from rag_rec.eval.recommenders import ScorerRanker

    class Negative:
        name = "negative"

        def fit(self, train):
            return self

        def score(self, anchors, user_id=None):
            return {"b": -0.1, "a": -0.5}

    products = {i: Product(i, f"item {i}") for i in "abcd"}
    ranker = ScorerRanker(Negative()).fit(Dataset("tiny", products))
    scores = ranker.score_vector([])
    order = [ranker.vocab.ids[i] for i in np.argsort(-scores)]
    assert order[:2] == ["b", "a"]
