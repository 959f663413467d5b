"""Can complements be borrowed across products through their text neighbours, down to items never seen in training?

smoothed_cooc.py borrowed co-occurrence rows from an anchor's text neighbours, which only reaches products with
training co-occurrences (37% of electronic's held-out targets). This goes one hop further: anchor -> its M nearest
products that have partners (cosine of MiniLM vectors) -> their co-occurrence partners (weighted by the neighbour's
similarity and the pair's cosine count) -> every product scored by its text similarity to those partners, so a
never-seen product that looks like a typical partner of a similar product can rank. Three ways to score against
the partners: a soft kernel sum exp(beta (cos - 1)), the weighted max of cos, and the cosine to the partners'
weighted mean vector. Scored alone and added to the hybrid's default fusion at several weights, on the harness's
test cases (ranking, ties and anchor exclusion as in fusion_weights.py).

    .venv/bin/python eval/experiments/translated_cooc.py electronic   # writes eval/results/experiments/
"""

from __future__ import annotations

import sys

import numpy as np
from fusion_weights import added_feature_recall, save

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

VARIANTS = (("soft", 20, 5.0), ("soft", 20, 10.0), ("soft", 5, 10.0), ("soft", 50, 10.0), ("max", 20, 0.0),
            ("mean", 20, 0.0))
WEIGHTS = (0.1, 0.25, 0.5, 1.0, 2.0)


def prepare(ranker: HybridRanker):
    s = ranker.signals
    vectors = s.text_vectors / np.maximum(np.linalg.norm(s.text_vectors, axis=1, keepdims=True), 1e-9)
    matrix = s.cooc.cooc.tocsr().astype(np.float64)
    matrix.setdiag(0)
    matrix.eliminate_zeros()
    counts = np.maximum(np.asarray(s.cooc.counts, dtype=float), 1.0)
    return vectors, matrix, counts, np.diff(matrix.indptr) > 0


def translated(prepared, anchors: list[int], neighbours: int, beta: float, mode: str) -> np.ndarray:
    vectors, matrix, counts, has_partners = prepared
    out = np.zeros(len(vectors))
    for a in anchors:
        sims = np.where(has_partners, vectors @ vectors[a], -np.inf)
        sims[a] = -np.inf
        weights: dict[int, float] = {}
        for b in np.argpartition(-sims, neighbours)[:neighbours].tolist():
            if not sims[b] > 0:
                continue
            start, end = matrix.indptr[b], matrix.indptr[b + 1]
            cols = matrix.indices[start:end]
            for c, v in zip(cols.tolist(), (sims[b] * matrix.data[start:end] / np.sqrt(counts[b] * counts[cols])).tolist()):
                if c != a:
                    weights[c] = weights.get(c, 0.0) + v
        if not weights:
            continue
        partners = np.fromiter(weights, dtype=np.int64)
        w = np.fromiter(weights.values(), dtype=float)
        if mode == "mean":
            q = w @ vectors[partners]
            out += vectors @ (q / (np.linalg.norm(q) or 1.0))
            continue
        cos = vectors[partners] @ vectors.T
        out += w @ np.exp(beta * (cos - 1.0)) if mode == "soft" else (w[:, None] * np.maximum(cos, 0.0)).max(axis=0)
    return out / max(float(np.abs(out).max()), 1e-9)


def main(domain: str) -> dict:
    settings = Settings(llm={"backend": "none"})
    train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
    ranker = HybridRanker(settings).fit(train)
    prepared = prepare(ranker)
    added = {f"{mode}_{m}" + (f"_beta{beta:g}" if mode == "soft" else ""):
             (lambda anchors, v=(m, beta, mode): translated(prepared, anchors, *v)) for mode, m, beta in VARIANTS}
    result = {"domain": domain, "test_cases": len(test_cases),
              "variants": [{"mode": mode, "neighbours": m, "beta": beta} for mode, m, beta in VARIANTS],
              "recall@10": added_feature_recall(settings, ranker, test_cases, added, WEIGHTS)}
    return save(f"translated_cooc-{domain}", result)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["electronic"]:
        main(name)
