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
from typing import Callable, Sequence

import numpy as np

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import basket_completion_split, bundle_completion_split
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


def added_feature_recall(settings: Settings, ranker: HybridRanker, cases, added: dict[str, Callable[[list[int]], np.ndarray]],
                         weights: Sequence[float]) -> dict[str, float]:
    """Recall@10 on `cases` of the hybrid's default fusion, lexical alone, and each added feature (name -> scores
    over the catalogue for a case's anchor rows) alone and added to the default fusion at each of `weights`."""
    features = [*FEATURES, "lex"]
    scored = []
    for item in case_features(ranker, cases, features):
        if item is None:
            scored.append(None)
            continue
        matrix, target, anchors, tie = item
        scored.append((np.vstack([matrix, *(score(anchors)[None] for score in added.values())]), target, anchors, tie))
    default = np.array([settings.retrieve.weights.get(f, 0.0) for f in features])
    none, unit = np.zeros(len(added)), np.eye(len(added))
    rows = {"hybrid_default": np.r_[default, none], "lexical_alone": np.r_[np.eye(len(features))[-1], none]}
    for j, name in enumerate(added):
        rows[f"{name}_alone"] = np.r_[np.zeros(len(features)), unit[j]]
        for w in weights:
            rows[f"hybrid_plus_{name}_at_{w}"] = np.r_[default, w * unit[j]]
    return {name: float(r) for name, r in zip(rows, recall_at(scored, np.vstack(list(rows.values()))))}


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


def test_and_validation(domain: str) -> tuple:
    """(train, test cases, inner train, validation cases): bundle completion for an Amazon domain, basket completion
    for "dunnhumby"; validation re-splits the training data the way the test split was made (for Dunnhumby: the
    households' last baskets before their test baskets)."""
    if domain == "dunnhumby":
        split, dataset = basket_completion_split, load_dataset("dunnhumby")
    else:
        split, dataset = bundle_completion_split, load_dataset(f"data/amazon-bundles/{domain}")
    train, test_cases = split(dataset)
    return (train, test_cases, *split(train, seed=1))


def main(domain: str) -> dict:
    settings = Settings(llm={"backend": "none"})
    train, test_cases, inner_train, valid_cases = test_and_validation(domain)
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


def last_weight_on_validation(settings: Settings, features: list[str], grid: list[float], domains: list[str], *,
                              behaviour: bool = False, single: dict[str, np.ndarray] | None = None) -> dict:
    """The weight of the last of `features` over `grid`, every other at its default, on bundle completion: each
    domain's training data re-split the way the harness splits (signals refit on the rest) gives validation
    Recall@10 per weight, and the best validation sum over the domains is the choice; test Recall@10 beside it (and
    of each `single` weight row on the test cases), for transparency only."""
    base = [settings.retrieve.weights[f] for f in features[:-1]]
    rows = np.array([base + [w] for w in grid])
    result: dict = {"grid": grid, "other_weights": dict(zip(features[:-1], base)), "domains": {}}
    for domain in domains:
        train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
        inner_train, valid_cases = bundle_completion_split(train, seed=1)
        valid = case_features(HybridRanker(settings, behaviour=behaviour).fit(inner_train), valid_cases, features)
        test = case_features(HybridRanker(settings, behaviour=behaviour).fit(train), test_cases, features)
        result["domains"][domain] = {
            "validation_cases": len(valid_cases), "test_cases": len(test_cases),
            "validation_recall@10": recall_at(valid, rows).tolist(), "test_recall@10": recall_at(test, rows).tolist(),
            **({"test_recall@10_single": {k: float(recall_at(test, w)[0]) for k, w in single.items()}}
               if single else {}),
        }
        print(domain, result["domains"][domain], flush=True)
    summed = np.sum([d["validation_recall@10"] for d in result["domains"].values()], axis=0)
    result["chosen_weight"] = grid[int(np.argmax(summed))]  # first of equal sums: the smaller weight
    result["validation_sum"] = summed.tolist()
    return result


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
