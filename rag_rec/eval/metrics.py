"""Metrics for session bundling (AICL and corrected), ranked completion and explanation text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ItemSet = frozenset


@dataclass(frozen=True)
class SessionScores:
    precision: float
    recall: float
    coverage: float
    precision_1to1: float
    recall_1to1: float
    coverage_1to1: float
    exact_match: float
    jaccard: float


def _true_sets(truth: Sequence[Sequence[str]]) -> list[ItemSet]:
    """A session's true bundles without empty ones (every session metric ignores those alike)."""
    gts = [ItemSet(t) for t in truth if len(t) > 0]
    if not gts:
        raise ValueError("a session needs at least one true bundle")
    return gts


def aicl_session_scores(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> tuple[float, float, float]:
    """AICL's per-session precision, recall, coverage.

    A predicted bundle is a hit when it is a subset of some true bundle (first one found, in order).
    precision = hits / |predicted|; recall = hits / |truth| (several predictions may hit the same true
    bundle, so recall can exceed 1: AICL's quirk, kept on purpose); coverage = mean over hits of
    |pred| / |matched true bundle| (0 when there is no hit).
    """
    preds = [ItemSet(p) for p in predicted if len(p) > 0]
    gts = _true_sets(truth)
    hits, covs = 0, []
    for p in preds:
        for t in gts:
            if p <= t:
                hits += 1
                covs.append(len(p) / len(t))
                break
    precision = hits / len(preds) if preds else 0.0
    return precision, hits / len(gts), float(np.mean(covs)) if covs else 0.0


def one_to_one_scores(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> tuple[float, float, float]:
    """Corrected variant: each true bundle is matched by at most one subset prediction and each prediction by at
    most one true bundle (as many matches as possible, then the most coverage), so recall <= 1. Coverage averages
    over matched true bundles."""
    preds = [ItemSet(p) for p in predicted if len(p) > 0]
    gts = _true_sets(truth)
    covs = []
    if preds and gts:  # the most matches, then the most coverage (a maximum-weight assignment, not greedy)
        from scipy.optimize import linear_sum_assignment

        weight = np.array([[1000.0 + len(p) / len(t) if p <= t else 0.0 for t in gts] for p in preds])
        for i, j in zip(*linear_sum_assignment(weight, maximize=True)):
            if weight[i, j] > 0:
                covs.append(weight[i, j] - 1000.0)
    precision = len(covs) / len(preds) if preds else 0.0
    return precision, len(covs) / len(gts), float(np.mean(covs)) if covs else 0.0


def exact_match_rate(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """Share of true bundles that some prediction reproduces exactly."""
    preds = {ItemSet(p) for p in predicted if len(p) > 0}
    gts = _true_sets(truth)
    return sum(t in preds for t in gts) / len(gts)


def mean_best_jaccard(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """For each true bundle, the best Jaccard with any prediction; averaged over true bundles."""
    preds = [ItemSet(p) for p in predicted if len(p) > 0]
    gts = _true_sets(truth)
    best = [max((len(t & p) / len(t | p) for p in preds), default=0.0) for t in gts]
    return float(np.mean(best))


def session_scores(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> SessionScores:
    p, r, c = aicl_session_scores(predicted, truth)
    p1, r1, c1 = one_to_one_scores(predicted, truth)
    return SessionScores(p, r, c, p1, r1, c1, exact_match_rate(predicted, truth), mean_best_jaccard(predicted, truth))


# ---- ranking ----


@dataclass(frozen=True)
class TiedRank:
    """Where a target lands among scored items: `higher` items score above it and `ties` others equal it, so under
    a random tie-break it is equally likely at each of ranks higher+1 .. higher+ties+1."""

    higher: int
    ties: int
    auc: float

    @property
    def rank(self) -> float:
        """The expected rank."""
        return self.higher + 1 + self.ties / 2

    def _block(self, last: int | None = None) -> np.ndarray:
        top = self.higher + self.ties + 1 if last is None else min(last, self.higher + self.ties + 1)
        return np.arange(self.higher + 1, top + 1, dtype=np.float64)

    def recall_at(self, k: int) -> float:
        """Recall@k averaged over the tie block (exactly, without drawing a tie-break)."""
        return len(self._block(k)) / (self.ties + 1)

    def ndcg_at(self, k: int) -> float:
        return float(np.sum(1.0 / np.log2(self._block(k) + 1))) / (self.ties + 1)

    def mrr(self) -> float:
        return float(np.sum(1.0 / self._block())) / (self.ties + 1)


def tied_rank(scores: np.ndarray, target: int, candidates: np.ndarray | None = None) -> TiedRank:
    """The target's place among finite-scored items. A target without a finite score ranks below all of them
    (AUC 0); ties count half in the AUC and spread the rank, so a constant scorer gets no hits for free."""
    valid = np.isfinite(scores) if candidates is None else candidates
    s = scores[target]
    n_other = int(valid.sum()) - (1 if valid[target] else 0)
    if not np.isfinite(s) or not valid[target]:
        return TiedRank(n_other, 0, 0.0)
    others = scores[valid]
    higher = int((others > s).sum())
    ties = int((others == s).sum()) - 1
    auc = 1.0 - (higher + 0.5 * ties) / n_other if n_other > 0 else 0.0
    return TiedRank(higher, ties, auc)


def rank_of(scores: np.ndarray, target: int, candidates: np.ndarray | None = None) -> tuple[float, float]:
    """Expected 1-based rank of `target` among finite-scored items (random tie-break), and its AUC."""
    placed = tied_rank(scores, target, candidates)
    return placed.rank, placed.auc


def recall_at(rank: int, k: int) -> float:
    return 1.0 if rank <= k else 0.0


def ndcg_at(rank: int, k: int) -> float:
    """Single relevant item: 1/log2(rank+1) within the top k."""
    return 1.0 / math.log2(rank + 1) if rank <= k else 0.0


def mrr(rank: int) -> float:
    return 1.0 / rank


# ---- explanation text ----


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (rouge-score package, stemming on)."""
    from rag_rec.errors import require

    rouge = require("rouge_score.rouge_scorer", "llm")
    scorer = rouge.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    result = scorer.score(reference, prediction)
    return {k: float(v.fmeasure) for k, v in result.items()}


# ---- uncertainty ----

def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    means = x[np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


@dataclass(frozen=True)
class PairedComparison:
    """Recommender a against b on the same cases: the ratio of means, its paired bootstrap interval, the cases
    each one wins, and the two-sided sign test over those cases."""
    mean_a: float
    mean_b: float
    ratio: float
    ratio_ci95: tuple[float, float]
    difference_ci95: tuple[float, float]
    wins_a: int
    wins_b: int
    sign_test_p: float


def paired_comparison(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000,
                      seed: int = 0) -> PairedComparison:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or len(x) == 0:
        raise ValueError(f"paired scores need the same non-empty cases ({len(x)} vs {len(y)})")
    idx = np.random.default_rng(seed).integers(0, len(x), (resamples, len(x)))
    mx, my = x[idx].mean(axis=1), y[idx].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(my > 0, mx / my, np.nan)
    ratio_ci = ((float(np.nanpercentile(ratios, 2.5)), float(np.nanpercentile(ratios, 97.5)))
                if np.isfinite(ratios).any() else (math.nan, math.nan))
    diff = mx - my
    wins_a, wins_b = int((x > y).sum()), int((y > x).sum())
    return PairedComparison(float(x.mean()), float(y.mean()), float(x.mean() / y.mean()) if y.mean() > 0 else math.nan,
                            ratio_ci, (float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))),
                            wins_a, wins_b, sign_test(wins_a, wins_b))


def sign_test(wins_a: int, wins_b: int) -> float:
    """Two-sided exact binomial p-value of wins_a vs wins_b under p = 1/2 (ties left out)."""
    n = wins_a + wins_b
    if n == 0:
        return 1.0
    k = min(wins_a, wins_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)
