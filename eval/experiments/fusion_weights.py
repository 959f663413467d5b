"""Can better fusion weights reach the bundle-completion target (hybrid >= 1.3x the best single signal)?

Weights are picked on a validation split of the training data (training sessions re-split the way the
harness splits, signals refit on the rest), then applied to the test cases. For scale, the same grid is also
scored on the test cases directly: an oracle no deployed system has, which bounds what any weights of these
features can reach. Ranking, tie-breaking and anchor exclusion are HybridRanker's.

    .venv/bin/python eval/experiments/fusion_weights.py electronic   # writes eval/results/experiments/
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.index.edge import EdgeStore
from rag_rec.pipeline import BundlePipeline
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

FEATURES = ["text", "text_max", "category", "cooc", "cf"]
LEVELS = [0, 0.25, 0.5, 1, 2]


def case_features(ranker: HybridRanker, cases, features: list[str] = FEATURES) -> list:
    pop = ranker.signals.popularity.counts
    tie = 1e-6 * pop / max(pop.max(), 1.0)
    out = []
    for case in cases:
        if case.target not in ranker.vocab.index:
            out.append(None)
            continue
        feats = ranker.scorer.features(ranker._pool, list(case.anchors), case.user_id, None)
        matrix = np.vstack([feats.get(f, np.zeros(len(ranker._pool))) for f in features])
        out.append((matrix, ranker.vocab.index[case.target], ranker.vocab.known(list(case.anchors)), tie))
    return out


def recall_at(cases_features: list, weights: np.ndarray, k: int = 10) -> np.ndarray:
    """Recall@k of every weight row over the cases (ties count against the target)."""
    hits = np.zeros(len(weights))
    for item in cases_features:
        if item is None:
            continue
        matrix, target, anchors, tie = item
        scores = weights @ matrix + tie
        scores[:, anchors] = -np.inf
        hits += (scores >= scores[:, [target]]).sum(axis=1) - 1 < k
    return hits / len(cases_features)


def main(domain: str) -> dict:
    settings = Settings(llm={"backend": "none"})
    train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
    inner_train, valid_cases = bundle_completion_split(train, seed=1)
    grid = np.array([w for w in itertools.product(LEVELS, repeat=len(FEATURES)) if sum(w) > 0], dtype=float)
    default = np.array([[settings.retrieve.weights[f] for f in FEATURES]])
    text_only = np.array([[1.0, 0, 0, 0, 0]])

    valid = case_features(HybridRanker(settings).fit(inner_train), valid_cases)
    valid_recall = recall_at(valid, grid)
    picked = grid[int(np.argmax(valid_recall))]
    test = case_features(HybridRanker(settings).fit(train), test_cases)
    test_recall = recall_at(test, grid)
    text, hybrid, tuned = (float(recall_at(test, w)[0]) for w in (text_only, default, picked[None]))
    result = {
        "domain": domain, "test_cases": len(test_cases), "validation_cases": len(valid_cases),
        "grid": {"features": FEATURES, "levels": LEVELS, "combinations": len(grid)},
        "test_recall@10": {"text": text, "hybrid_default": hybrid, "hybrid_validation_tuned": tuned,
                           "oracle_best": float(test_recall.max())},
        "validation_tuned_weights": dict(zip(FEATURES, picked.tolist())),
        "oracle_weights": dict(zip(FEATURES, grid[int(np.argmax(test_recall))].tolist())),
        "ratio_to_text": {"default": hybrid / text, "validation_tuned": tuned / text,
                          "oracle": float(test_recall.max()) / text},
    }
    return save(f"fusion_weights-{domain}", result)


@contextmanager
def served_pipeline(settings: Settings, dataset, signals):
    """The product's pipeline over a fresh qdrant-edge index of `dataset` in a temporary directory: what the API
    serves, for experiments that score the online retriever."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(Path(tmp) / "idx", collection="products")
        pipe = BundlePipeline(settings.model_copy(update={"index": settings.index.model_copy(update={"path": Path(tmp)})}),
                              dataset, signals, store)
        pipe.sync_index(rebuild=True)
        try:
            yield pipe
        finally:
            store.close()


def save(name: str, result: dict) -> dict:
    """Write eval/results/experiments/<name>.json and print it."""
    out = Path("eval/results/experiments") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    for name in sys.argv[1:] or ["electronic", "clothing"]:
        main(name)
