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

sys.path.insert(0, str(Path(__file__).parent))
from fusion_weights import last_weight_on_validation, save

from rag_rec.settings import Settings

GRID = [0.0, 0.15, 0.3, 0.5, 0.75, 1.0, 1.5]
FEATURES = ["text", "text_max", "category", "cooc", "cf", "lex", "behaviour"]


def main(domains: list[str]) -> dict:
    settings = Settings(llm={"backend": "none"})
    result = {"default": settings.retrieve.weights["behaviour"], "epochs": settings.behaviour.epochs,
              **last_weight_on_validation(settings, FEATURES, GRID, domains, behaviour=True)}
    return save("behaviour_weight", result)


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing"])
