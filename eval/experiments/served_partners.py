"""How many co-occurrence partners the served pool needs, chosen on validation splits of the online path.

HybridRetriever's pool is the engine's fused hits (`retrieve.prefetch_k`) plus the anchors' strongest
co-occurrence partners the engine did not return, at most `retrieve.partners_k` of them. Every pool row is read
and scored after the engine call, so fewer partners is less work per request (the latency benchmark's catalogue,
Dunnhumby, has up to 200 partners per product). Measured like served_settings.py at its chosen settings: a real
qdrant-edge index per split, HybridRetriever.retrieve per case (k=40, the API default), Recall@10 and @40 of the
held-out item among the served candidates. The choice is made on validation re-splits of the Amazon bundle domains
and of Dunnhumby's basket completion (92k products; 1,000 households' last baskets are the test, their baskets
before those the validation) and reported on the test splits. Dunnhumby takes part in the choice here, unlike in
served_settings.py: on the Amazon bundles co-occurrence partners are nearly neutral (their items are mostly one-off),
on a grocery catalogue they are the strongest signal, and one pool size has to serve both. Writes
eval/results/experiments/served_partners.json.

    .venv/bin/python eval/experiments/served_partners.py [electronic clothing dunnhumby]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fusion_weights import save, served_pipeline, test_and_validation

from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.settings import Settings
from rag_rec.signals.suite import fit_signals

PARTNERS = (80, 60, 40, 30, 20, 0)


def served_recall(settings: Settings, train, cases) -> dict[str, list[float]]:
    """Recall@10 and @40 of the served candidates for every partners_k, in PARTNERS order."""
    signals = fit_signals(train, settings)
    out: dict[str, list[float]] = {"recall@10": [], "recall@40": []}
    with served_pipeline(settings, train, signals) as pipe:
        retriever, base = pipe.retriever, pipe.retriever.settings
        for partners in PARTNERS:
            retriever.settings = base.model_copy(update={"partners_k": partners})
            ranks = []
            for case in cases:
                served = [c.id for c in retriever.retrieve(
                    RetrievalRequest(anchors=tuple(case.anchors), user_id=case.user_id, k=40)).candidates]
                ranks.append(served.index(case.target) if case.target in served else 40)
            ranks = np.asarray(ranks)
            out["recall@10"].append(float(np.mean(ranks < 10)))
            out["recall@40"].append(float(np.mean(ranks < 40)))
    return out


def main(domains: list[str]) -> dict:
    settings = Settings(llm={"backend": "none"})
    result: dict = {"partners_k": list(PARTNERS), "defaults_when_run": settings.retrieve.model_dump(
        include={"prefetch_k", "partners_k", "substitute_discount"}), "domains": {}}
    for domain in domains:
        train, test_cases, inner_train, valid_cases = test_and_validation(domain)
        valid, test = served_recall(settings, inner_train, valid_cases), served_recall(settings, train, test_cases)
        result["domains"][domain] = {"validation_cases": len(valid_cases), "test_cases": len(test_cases),
                                     "validation": valid, "test": test}
        print(domain, flush=True)
        for p, v10, v40, t10, t40 in zip(PARTNERS, valid["recall@10"], valid["recall@40"], test["recall@10"],
                                         test["recall@40"]):
            print(f"  partners_k {p:3d}  valid {v10:.3f} {v40:.3f}  test {t10:.3f} {t40:.3f}", flush=True)
    if result["domains"]:
        summed = {m: np.sum([d["validation"][m] for d in result["domains"].values()], axis=0)
                  for m in ("recall@10", "recall@40")}
        result["validation_sum"] = {m: v.tolist() for m, v in summed.items()}
        # best validation Recall@10, then @40, then fewer partners (less post-engine work); sums rounded so that
        # equal case counts compare equal
        best = max(range(len(PARTNERS)), key=lambda g: (round(summed["recall@10"][g], 9),
                                                         round(summed["recall@40"][g], 9), -PARTNERS[g]))
        result["chosen"] = {"partners_k": PARTNERS[best]}
    return save("served_partners", result)


if __name__ == "__main__":
    main(sys.argv[1:] or ["electronic", "clothing", "dunnhumby"])
