"""How much weight the behaviour feature gets in the fusion (`retrieve.weights.behaviour`), chosen on validation splits.

The default, 0.3, was set when the feature first joined the fusion, not chosen on data. Here every other weight
stays at its default and the behaviour weight runs over a grid, with the Transformer trained as `behaviour.serve`
trains it (default settings, 20 epochs). Each domain's training data is re-split the way the harness splits
(signals and network refit on the rest); the weight with the best validation Recall@10 summed over both domains is
the choice. Test Recall@10 is reported beside each weight, for transparency only.

    .venv/bin/python eval/experiments/behaviour_weight.py   # writes eval/results/experiments/behaviour_weight.json
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

GRID = [0.0, 0.15, 0.3, 0.5, 0.75, 1.0, 1.5]
FEATURES = ["text", "text_max", "category", "cooc", "cf", "lex", "behaviour"]


def main(domains: list[str]) -> dict:
    settings = Settings(llm={"backend": "none"})
    base = [settings.retrieve.weights[f] for f in FEATURES[:-1]]
    rows = np.array([base + [w] for w in GRID])
    result: dict = {"grid": GRID, "default": settings.retrieve.weights["behaviour"],
                    "other_weights": dict(zip(FEATURES[:-1], base)), "epochs": settings.behaviour.epochs,
                    "domains": {}}
    for domain in domains:
        train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
        inner_train, valid_cases = bundle_completion_split(train, seed=1)
        valid = case_features(HybridRanker(settings, behaviour=True).fit(inner_train), valid_cases, FEATURES)
        test = case_features(HybridRanker(settings, behaviour=True).fit(train), test_cases, FEATURES)
        result["domains"][domain] = {
            "validation_cases": len(valid_cases), "test_cases": len(test_cases),
            "validation_recall@10": recall_at(valid, rows).tolist(), "test_recall@10": recall_at(test, rows).tolist(),
        }
        print(domain, result["domains"][domain], flush=True)
    summed = np.sum([d["validation_recall@10"] for d in result["domains"].values()], axis=0)
    result["chosen_weight"] = GRID[int(np.argmax(summed))]  # first of equal sums: the smaller weight
    result["validation_sum"] = summed.tolist()
    return save("behaviour_weight", result)


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing"])
