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
from fusion_weights import FEATURES, case_features, recall_at, save

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
    features = [*FEATURES, "lex"]
    train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
    ranker = HybridRanker(settings).fit(train)
    cases = []
    for item in case_features(ranker, test_cases, features):
        if item is None:
            cases.append(None)
            continue
        matrix, target, anchors, tie = item
        cases.append((np.vstack([matrix] + [smoothed(ranker, anchors, m)[None] for m in NEIGHBOURS]), target, anchors, tie))
    default = np.array([settings.retrieve.weights.get(f, 0.0) for f in features])
    rows = {"hybrid_default": np.r_[default, np.zeros(len(NEIGHBOURS))],
            "lexical_alone": np.r_[np.eye(len(features))[-1], np.zeros(len(NEIGHBOURS))]}
    for j, m in enumerate(NEIGHBOURS):
        rows[f"smoothed_{m}_alone"] = np.r_[np.zeros(len(features)), np.eye(len(NEIGHBOURS))[j]]
        for w in WEIGHTS:
            rows[f"hybrid_plus_smoothed_{m}_at_{w}"] = np.r_[default, w * np.eye(len(NEIGHBOURS))[j]]
    recall = recall_at(cases, np.vstack(list(rows.values())))
    result = {"domain": domain, "test_cases": len(test_cases), "neighbours": NEIGHBOURS,
              "recall@10": {name: float(r) for name, r in zip(rows, recall)}}
    return save(f"smoothed_cooc-{domain}", result)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["electronic"]:
        main(name)
