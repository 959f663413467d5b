"""Does the online product path keep the offline ranker's bundle-completion recall, with and without lexical?

The harness's `hybrid` ranks the whole catalogue; the served retriever scores only the pool the engine query
(text + cf prefetch, RRF) and the co-occurrence partners bring. Same training split, same fusion weights; the
online side runs HybridRetriever.retrieve on a real qdrant-edge index of the training catalogue (no
substitute discount, as the offline ranker has none). Writes eval/results/experiments/online_vs_offline.json.

    .venv/bin/python eval/experiments/online_vs_offline.py [electronic clothing]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fusion_weights import served_pipeline

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings
from rag_rec.signals.suite import fit_signals


def recall(domain: str) -> dict:
    settings = Settings(llm={"backend": "none"}, retrieve={"substitute_discount": 1.0})
    train, cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{domain}"))
    signals = fit_signals(train, settings)
    lexical = signals.lexical
    out: dict = {"cases": len(cases)}
    with served_pipeline(settings, train, signals) as pipe:
        ranker = HybridRanker(settings).using(signals, pipe.retriever.scorer)
        for name, lex in (("with_lexical", lexical), ("without_lexical", None)):
            signals.lexical = lex
            online = offline = 0
            for case in cases:
                if case.target not in signals.vocab.index:
                    continue
                served = pipe.retriever.retrieve(RetrievalRequest(anchors=tuple(case.anchors), k=10)).candidates
                online += case.target in [c.id for c in served]
                top = np.argsort(-ranker.score_vector(list(case.anchors)), kind="stable")[:10]
                offline += case.target in [signals.vocab.ids[i] for i in top]
            out[name] = {"online_recall@10": online / len(cases), "offline_recall@10": offline / len(cases)}
        signals.lexical = lexical
    return out


if __name__ == "__main__":
    results = {d: recall(d) for d in sys.argv[1:] or ["electronic", "clothing"]}
    path = Path("eval/results/experiments/online_vs_offline.json")
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
