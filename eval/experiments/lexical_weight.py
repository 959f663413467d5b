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
from fusion_weights import last_weight_on_validation, save

from rag_rec.settings import Settings

GRID = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
FEATURES = ["text", "text_max", "category", "cooc", "cf", "lex"]


def main(domains: list[str]) -> dict:
    single = {"text": np.eye(len(FEATURES))[[0]], "lex": np.eye(len(FEATURES))[[FEATURES.index("lex")]]}
    return save("lexical_weight", last_weight_on_validation(Settings(llm={"backend": "none"}), FEATURES, GRID, domains,
                                                            single=single))


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing"])
