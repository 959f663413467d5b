"""Can a learned reranker over the fusion's features reach the bundle-completion target (1.3x the best single signal)?

The hybrid's weighted sum is linear in its features; session 3 showed no weighting of them reaches 1.3x. This
experiment learns a non-linear scorer (gradient-boosted trees, pointwise) over the same features plus relative
and structural ones (ranks within the query, category-path overlap, popularity) and reranks the hybrid's top
POOL. Training cases come from the training data only: it is re-split the harness's way under several seeds
(signals refit on the rest each time), so the model never sees a test session or a signal fitted on one.

    .venv/bin/python eval/experiments/learned_fusion.py electronic clothing   # writes eval/results/experiments/
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

POOL = 100
BASE = ["text", "text_max", "lex", "category", "cooc", "cf"]
SEEDS = (1, 2, 3, 4, 5, 6)
CONTENT = ["text", "text_max", "lex", "category", "rank_text", "rank_lex", "gap_text", "gap_lex", "same_leaf",
           "shared_depth", "depth", "anchors", "title_len"]
# Every item of this catalogue occurs in some session, so "no training interactions" almost means "in a held-out
# session": any per-item interaction statistic (popularity, an ALS factor, co-occurrence) can leak the split. The
# leaky set is measured only to show the size of that effect; the content set is the honest one.
FEATURE_SETS = {
    "learned_content": CONTENT,
    "learned_content_cooc": CONTENT + ["cooc"],
    "learned_all_signals": CONTENT + ["cooc", "cf", "hybrid", "rank_hybrid"],
    "leaky_with_popularity": CONTENT + ["cooc", "cf", "hybrid", "rank_hybrid", "pop", "seen"],
}


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out


class CaseFeatures:
    """Per-candidate feature rows for one fitted ranker (the training catalogue's signals)."""

    def __init__(self, ranker: HybridRanker, products: dict):
        self.ranker = ranker
        s = ranker.signals
        self.pop = np.log1p(s.popularity.counts)
        self.paths = [tuple(products[i].category) if i in products else () for i in s.vocab.ids]
        self.leaf = s.cooc.leaf
        lengths = [len(products[i].title.split()) if i in products else 0 for i in s.vocab.ids]
        self.title_len = np.asarray(lengths, dtype=float)

    def names(self) -> list[str]:
        return BASE + ["hybrid", "rank_hybrid", "rank_text", "rank_lex", "gap_text", "gap_lex", "same_leaf",
                       "shared_depth", "depth", "pop", "seen", "anchors", "title_len"]

    def of(self, anchors: list[str], user_id: str | None) -> tuple[np.ndarray, np.ndarray] | None:
        r = self.ranker
        known = r.vocab.known(anchors)
        if not known:
            return None
        everything = r._pool
        feats = r.scorer.features(everything, anchors, user_id, None)
        hybrid = r.scorer.score(feats, len(everything)) + 1e-6 * self.pop
        hybrid[known] = -np.inf
        pool = np.argsort(-hybrid, kind="stable")[:POOL]
        cols = [feats.get(f, np.zeros(len(everything)))[pool] for f in BASE]
        text, lex = cols[0], cols[2]
        anchor_paths = [self.paths[i] for i in known]
        shared = np.array([max(_shared(self.paths[j], p) for p in anchor_paths) for j in pool.tolist()], dtype=float)
        anchor_leaves = {int(self.leaf[i]) for i in known if self.leaf[i] >= 0}
        same_leaf = np.array([float(int(self.leaf[j]) in anchor_leaves) for j in pool.tolist()])
        rows = np.column_stack(cols + [
            hybrid[pool], np.arange(len(pool), dtype=float), _ranks(text), _ranks(lex),
            text - text.max(), lex - lex.max(), same_leaf, shared,
            np.array([len(self.paths[j]) for j in pool.tolist()], dtype=float), self.pop[pool],
            (self.pop[pool] > 0).astype(float), np.full(len(pool), float(len(known))), self.title_len[pool],
        ])
        return pool, rows


def _shared(a: tuple, b: tuple) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def collect(features: CaseFeatures, cases) -> list[tuple[np.ndarray, np.ndarray, int | None]]:
    """(pool, feature rows, position of the target in the pool or None) per case whose target is known."""
    out = []
    index = features.ranker.vocab.index
    for case in cases:
        if case.target not in index:
            out.append(None)
            continue
        got = features.of(list(case.anchors), case.user_id)
        if got is None:
            out.append(None)
            continue
        pool, rows = got
        where = np.flatnonzero(pool == index[case.target])
        out.append((pool, rows, int(where[0]) if len(where) else None))
    return out


def recall_ndcg(collected, score_fn, k: int = 10) -> dict:
    hits, gains = 0.0, 0.0
    for item in collected:
        if item is None or item[2] is None:
            continue
        _, rows, target = item
        scores = score_fn(rows)
        rank = int((scores > scores[target]).sum() + (scores[:target] == scores[target]).sum())
        if rank < k:
            hits += 1
            gains += 1.0 / np.log2(rank + 2)
    n = len(collected)
    return {"recall@10": hits / n, "ndcg@10": gains / n}


def main(domains: list[str]) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    settings = Settings(llm={"backend": "none"})
    result: dict = {"pool": POOL, "seeds": list(SEEDS), "domains": {}}
    for domain in domains:
        t0 = time.perf_counter()
        dataset = load_dataset(f"data/amazon-bundles/{domain}")
        train, test_cases = bundle_completion_split(dataset)
        x, y, groups = [], [], []
        for seed in SEEDS:
            inner, valid_cases = bundle_completion_split(train, seed=seed)
            feats = CaseFeatures(HybridRanker(settings).fit(inner), inner.products)
            for item in collect(feats, valid_cases):
                if item is None:
                    continue
                _, rows, target = item
                label = np.zeros(len(rows))
                if target is not None:
                    label[target] = 1.0
                x.append(rows), y.append(label), groups.append(np.full(len(rows), seed))
        x, y = np.vstack(x), np.concatenate(y)
        test_feats = CaseFeatures(HybridRanker(settings).fit(train), train.products)
        test = collect(test_feats, test_cases)
        names = test_feats.names()
        col = {n: i for i, n in enumerate(names)}
        runs = {
            "hybrid": lambda rows: -rows[:, col["rank_hybrid"]],
            "text": lambda rows: rows[:, col["text"]],
            "lexical": lambda rows: rows[:, col["lex"]],
        }
        for name, use in FEATURE_SETS.items():
            keep = [col[n] for n in use]
            model = HistGradientBoostingClassifier(random_state=0, l2_regularization=1.0, max_iter=150,
                                                   learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=40)
            model.fit(x[:, keep], y)
            runs[name] = lambda rows, m=model, keep=keep: m.predict_proba(rows[:, keep])[:, 1]
        target_unseen = [t[1][t[2], col["seen"]] == 0 for t in test if t is not None and t[2] is not None]
        pool_unseen = np.mean([np.mean(t[1][:, col["seen"]] == 0) for t in test if t is not None])
        scored = {name: recall_ndcg(test, fn) for name, fn in runs.items()}
        best_single = max(scored["text"]["recall@10"], scored["lexical"]["recall@10"])
        result["domains"][domain] = {
            "training_rows": int(len(y)), "training_positives": int(y.sum()), "test_cases": len(test_cases),
            "test_targets_in_pool": sum(1 for t in test if t is not None and t[2] is not None),
            "leak_check": {"targets_in_pool_without_training_interactions": float(np.mean(target_unseen)),
                           "pool_items_without_training_interactions": float(pool_unseen)},
            "test": scored,
            "ratio_to_best_single": {n: v["recall@10"] / best_single for n, v in scored.items()},
            "note": "text and lexical here rank within the hybrid's top pool, so they can only score at or above "
                    "their full-catalogue values; the harness's full-catalogue text/lexical R@10 are the baselines",
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(domain, json.dumps(result["domains"][domain], indent=1))
    out = Path("eval/results/experiments/learned_fusion.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing"])
