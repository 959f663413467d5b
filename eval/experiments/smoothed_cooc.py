"""Does co-occurrence smoothed over text neighbours help bundle completion?

Held-out bundles are mostly made of items whose own training co-occurrences say little (ItemKNN R@10 0.026 on
electronic). This feature borrows them from the anchor's nearest text neighbours: for each of the M most similar
products a' (cosine of MiniLM vectors), a' 's co-occurrence row normalised by sqrt(count(a') count(b)), weighted by
the similarity, summed and scaled to a maximum of 1. It is scored alone and added to the hybrid's default fusion
at several weights, on the harness's test cases (ranking, ties and anchor exclusion as in fusion_weights.py).

    .venv/bin/python eval/experiments/smoothed_cooc.py electronic   # writes eval/results/experiments/
"""

from __future__ import annotations

import sys

import numpy as np
from fusion_weights import added_feature_recall, save

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

NEIGHBOURS = (10, 30)
WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)


def smoothed(ranker: HybridRanker, anchors: list[int], neighbours: int) -> np.ndarray:
    s = ranker.signals
    vectors = s.text_vectors / np.maximum(np.linalg.norm(s.text_vectors, axis=1, keepdims=True), 1e-9)
    matrix = s.cooc.cooc.tocsr()
    counts = np.maximum(np.asarray(s.cooc.counts, dtype=float), 1.0)
    out = np.zeros(len(vectors))
    for a in anchors:
        sims = vectors @ vectors[a]
        sims[a] = -np.inf
        for b in np.argpartition(-sims, neighbours)[:neighbours].tolist():
            start, end = matrix.indptr[b], matrix.indptr[b + 1]
            cols = matrix.indices[start:end]
            out[cols] += sims[b] * matrix.data[start:end] / np.sqrt(counts[b] * counts[cols])
    return out / max(out.max(), 1e-9)


def main(domain: str) -> dict:
    settings = Settings(llm={"backend": "none"})
    train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
    ranker = HybridRanker(settings).fit(train)
    added = {f"smoothed_{m}": (lambda anchors, m=m: smoothed(ranker, anchors, m)) for m in NEIGHBOURS}
    result = {"domain": domain, "test_cases": len(test_cases), "neighbours": NEIGHBOURS,
              "recall@10": added_feature_recall(settings, ranker, test_cases, added, WEIGHTS)}
    return save(f"smoothed_cooc-{domain}", result)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["electronic"]:
        main(name)
