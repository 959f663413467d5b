"""Does a learned complement projection of the text embeddings help bundle completion?

score_comp(b | anchors) = max_a cos(W a, b), with W (d x d) identity-initialised and trained with a full
softmax over the catalogue (temperature 0.05) on ordered item pairs that share a training bundle or session,
an L2 penalty on W - I. Regularisation is chosen on a validation split of the training data; the test
cases are scored alone and fused with the hybrid (score_hybrid + w * score_comp).

    .venv/bin/python eval/experiments/complement_projection.py electronic   # prints the recalls
"""

from __future__ import annotations

import json
import sys

import numpy as np

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

BLENDS = {"hybrid": (1, 0), "comp": (0, 1), "h+0.5c": (1, 0.5), "h+1c": (1, 1), "h+2c": (1, 2), "h+4c": (1, 4)}


def item_pairs(data, vocab) -> np.ndarray:
    groups = [b.items for b in data.bundles] + [s.items for s in data.sessions.values()]
    pairs = []
    for group in groups:
        idx = vocab.known(list(dict.fromkeys(group)))
        pairs.extend((a, b) for a in idx for b in idx if a != b)
    return np.array(pairs)


def train_projection(vectors: np.ndarray, pairs: np.ndarray, reg: float, epochs: int = 30, tau: float = 0.05,
                     lr: float = 1e-3, seed: int = 0) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    items = torch.tensor(vectors)
    dim = items.shape[1]
    delta = torch.nn.Parameter(torch.zeros(dim, dim))
    opt = torch.optim.Adam([delta], lr=lr)
    pairs_t = torch.tensor(pairs)
    for _ in range(epochs):
        order = torch.randperm(len(pairs_t))
        for start in range(0, len(pairs_t), 256):
            batch = pairs_t[order[start:start + 256]]
            q = items[batch[:, 0]] @ (torch.eye(dim) + delta)
            logits = (q / q.norm(dim=1, keepdim=True)) @ items.T / tau
            logits[torch.arange(len(batch)), batch[:, 0]] = -1e9
            loss = torch.nn.functional.cross_entropy(logits, batch[:, 1]) + reg * (delta ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (torch.eye(dim) + delta).detach().numpy()


def recalls(ranker: HybridRanker, cases, projection: np.ndarray, k: int = 10) -> dict[str, float]:
    vectors = ranker.signals.text_vectors
    pop = ranker.signals.popularity.counts
    tie = 1e-6 * pop / max(pop.max(), 1.0)
    hits = {name: 0 for name in BLENDS}
    for case in cases:
        if case.target not in ranker.vocab.index:
            continue
        feats = ranker.scorer.features(ranker._pool, list(case.anchors), case.user_id, None)
        hybrid = ranker.scorer.score(feats, len(ranker._pool))
        idx = ranker.vocab.known(list(case.anchors))
        comp = np.zeros(len(vectors))
        if idx:
            q = vectors[idx] @ projection
            comp = (vectors @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T).max(axis=1)
        target = ranker.vocab.index[case.target]
        for name, (wh, wc) in BLENDS.items():
            scores = wh * hybrid + wc * comp + tie
            scores[idx] = -np.inf
            hits[name] += int((scores >= scores[target]).sum() - 1 < k)
    return {name: hit / len(cases) for name, hit in hits.items()}


def main(domain: str) -> dict:
    settings = Settings(llm={"backend": "none"})
    train, test_cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
    inner, valid_cases = bundle_completion_split(train, seed=1)
    ranker = HybridRanker(settings).fit(inner)
    pairs = item_pairs(inner, ranker.vocab)
    valid = {reg: recalls(ranker, valid_cases, train_projection(ranker.signals.text_vectors, pairs, reg))
             for reg in (1e-3, 1e-4, 1e-5)}
    best = max(valid, key=lambda reg: max(valid[reg].values()))
    ranker = HybridRanker(settings).fit(train)
    test = recalls(ranker, test_cases, train_projection(ranker.signals.text_vectors, item_pairs(train, ranker.vocab), best))
    result = {"domain": domain, "pairs": len(pairs), "validation_recall@10": {str(r): v for r, v in valid.items()},
              "regularisation": best, "test_recall@10": test}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    for name in sys.argv[1:] or ["electronic"]:
        main(name)
