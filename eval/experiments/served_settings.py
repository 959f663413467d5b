"""The served retriever's substitute discount and pool size, chosen on validation splits of the online path.

The harness's `hybrid` ranks the whole catalogue with the fusion weights; what is served is HybridRetriever:
the engine's fused text + cf prefetch (`retrieve.prefetch_k` hits) plus up to prefetch_k co-occurrence partners
(`retrieve.partners_k` is set to prefetch_k here, as it was before that knob existed; served_partners.py chooses it),
scored by the same fusion, then candidates of an anchor's kind (likely substitutes) multiplied by
`retrieve.substitute_discount`. Neither knob exists offline, so both are measured here on the online path: a real
qdrant-edge index per split, HybridRetriever.retrieve per case (k=40, the API default), Recall@10 and @40 of the
held-out item among the served candidates, and the share of served candidates of an anchor's kind (the composer
keeps one product per kind in a bundle). Each domain's training data is re-split the way the harness splits
(signals refit, index rebuilt on the rest) for validation; the test split is reported beside it. Dunnhumby's
basket completion (92k products, 1,000 households' last baskets) is served too as a check on a catalogue of
another kind; it takes no part in the choice. Writes eval/results/experiments/served_settings.json.

    .venv/bin/python eval/experiments/served_settings.py [electronic clothing dunnhumby]
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fusion_weights import save, served_pipeline, test_and_validation

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import basket_completion_split
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.settings import Settings
from rag_rec.signals.suite import fit_signals

DISCOUNTS = (1.0, 0.9, 0.75, 0.5)
POOLS = (100, 80, 60, 50, 40)


def served_recall(settings: Settings, train, cases) -> dict[str, list[float]]:
    """Recall@10 and @40 of the served candidates for every (discount, prefetch_k) of the grid, in grid order."""
    signals = fit_signals(train, settings)
    recalls: dict[str, list[float]] = {"recall@10": [], "recall@40": [], "same_kind_share": []}
    with served_pipeline(settings, train, signals) as pipe:
        retriever, base = pipe.retriever, pipe.retriever.settings
        for discount, pool in itertools.product(DISCOUNTS, POOLS):
            retriever.settings = base.model_copy(update={"substitute_discount": discount, "prefetch_k": pool,
                                                          "partners_k": pool})
            ranks, same_kind = [], []
            for case in cases:
                served = [c.id for c in retriever.retrieve(
                    RetrievalRequest(anchors=tuple(case.anchors), user_id=case.user_id, k=40)).candidates]
                ranks.append(served.index(case.target) if case.target in served else 40)
                kinds = {train.products[a].kind for a in case.anchors}
                same_kind.append(np.mean([train.products[i].kind in kinds for i in served]) if served else 0.0)
            ranks = np.asarray(ranks)
            recalls["recall@10"].append(float(np.mean(ranks < 10)))
            recalls["recall@40"].append(float(np.mean(ranks < 40)))
            recalls["same_kind_share"].append(float(np.mean(same_kind)))
    return recalls


def main(domains: list[str]) -> dict:
    settings = Settings(llm={"backend": "none"})
    grid = [{"substitute_discount": d, "prefetch_k": p} for d, p in itertools.product(DISCOUNTS, POOLS)]
    result: dict = {"grid": grid, "defaults_before": {"substitute_discount": settings.retrieve.substitute_discount,
                                                      "prefetch_k": settings.retrieve.prefetch_k}, "domains": {}}
    for domain in [d for d in domains if d != "dunnhumby"]:
        train, test_cases, inner_train, valid_cases = test_and_validation(domain)
        valid, test = served_recall(settings, inner_train, valid_cases), served_recall(settings, train, test_cases)
        result["domains"][domain] = {"validation_cases": len(valid_cases), "test_cases": len(test_cases),
                                     "validation": valid, "test": test}
        print(domain, flush=True)
        for g, v10, v40, t10, t40, share in zip(grid, valid["recall@10"], valid["recall@40"], test["recall@10"],
                                                test["recall@40"], test["same_kind_share"]):
            print(f"  {g}  valid {v10:.3f} {v40:.3f}  test {t10:.3f} {t40:.3f}  same kind {share:.2f}", flush=True)
    if "dunnhumby" in domains:
        train, test_cases = basket_completion_split(load_dataset("dunnhumby"))
        test = served_recall(settings, train, test_cases)
        result["checks"] = {"dunnhumby": {"test_cases": len(test_cases), "test": test}}
        print("dunnhumby", flush=True)
        for g, t10, t40, share in zip(grid, test["recall@10"], test["recall@40"], test["same_kind_share"]):
            print(f"  {g}  test {t10:.3f} {t40:.3f}  same kind {share:.2f}", flush=True)
    summed = {m: np.sum([d["validation"][m] for d in result["domains"].values()], axis=0) for m in ("recall@10", "recall@40")}
    result["validation_sum"] = {m: v.tolist() for m, v in summed.items()}
    # best validation Recall@10, then @40, then the smaller pool (less post-engine work); sums rounded so that equal
    # case counts compare equal
    best = max(range(len(grid)), key=lambda g: (round(summed["recall@10"][g], 9), round(summed["recall@40"][g], 9),
                                                -grid[g]["prefetch_k"]))
    result["chosen"] = grid[best]
    return save("served_settings", result)


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing", "dunnhumby"])
