"""How much weight the lexical (TF-IDF title) feature gets in the hybrid fusion, chosen on validation splits.

Every other weight stays at its default; the lexical weight runs over a grid. Each domain's training data is
re-split the way the harness splits (signals refit on the rest); the weight with the best validation Recall@10
summed over both domains becomes the default. Test Recall@10 is reported beside it for each weight, and the
lexical and text signals alone for scale.

    .venv/bin/python eval/experiments/lexical_weight.py   # writes eval/results/experiments/lexical_weight.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fusion_weights import case_features, recall_at, save

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
FEATURES = ["text", "text_max", "category", "cooc", "cf", "lex"]


def weight_rows(settings: Settings) -> np.ndarray:
    base = [settings.retrieve.weights[f] for f in FEATURES[:-1]]
    return np.array([base + [w] for w in GRID])


def main(domains: list[str]) -> dict:
    settings = Settings(llm={"backend": "none"})
    rows = weight_rows(settings)
    single = {"text": np.eye(len(FEATURES))[[0]], "lex": np.eye(len(FEATURES))[[FEATURES.index("lex")]]}
    result: dict = {"grid": GRID, "other_weights": dict(zip(FEATURES[:-1], rows[0, :-1].tolist())), "domains": {}}
    for domain in domains:
        train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
        inner_train, valid_cases = bundle_completion_split(train, seed=1)
        valid = case_features(HybridRanker(settings).fit(inner_train), valid_cases, FEATURES)
        test = case_features(HybridRanker(settings).fit(train), test_cases, FEATURES)
        result["domains"][domain] = {
            "validation_cases": len(valid_cases), "test_cases": len(test_cases),
            "validation_recall@10": recall_at(valid, rows).tolist(), "test_recall@10": recall_at(test, rows).tolist(),
            "test_recall@10_single": {k: float(recall_at(test, w)[0]) for k, w in single.items()},
        }
    summed = np.sum([d["validation_recall@10"] for d in result["domains"].values()], axis=0)
    result["chosen_weight"] = GRID[int(np.argmax(summed))]  # first of equal sums: the smaller weight
    result["validation_sum"] = summed.tolist()
    return save("lexical_weight", result)


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing"])
