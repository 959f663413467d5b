"""Does the served behaviour feature (`behaviour.serve`) help the online retriever, and which scaling of its logits?

Session 23 moved the feature onto the compiled fusion. Its logits are min-max scaled over the model's best 1,000
of the whole catalogue (0 outside them), as before; the scan behind that range is cached per sequence and the
pool is scored alone. The alternative tried first, min-max over the request's pool (as the cf feature is scaled),
needs no scan. This runs the served retriever (qdrant-edge index of the training catalogue, the compiled fusion,
default weights) on the test cases without the feature, with the catalogue scaling and with the pool scaling, and
writes recall@10 with paired win / loss counts against "without" to eval/results/experiments/served_behaviour.json.

Session 24 re-ran it after closing a split leak (the model had ranked items it never trained on, the held-out
sessions' items in a session split, above the rest: eval/experiments/behaviour_weight.py). Session 23's Amazon
gains (0.196 -> 0.241, 0.338 -> 0.383) came from that leak; Dunnhumby's did not.

Basket completion on Dunnhumby (1,000 households: their user id, the basket's other items as anchors) is where the
model has long histories to read; bundle completion on the Amazon domains checks what it does there.

    .venv/bin/python eval/experiments/served_behaviour.py [--epochs 20] [dunnhumby electronic clothing]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fusion_weights import save, served_pipeline

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import basket_completion_split, bundle_completion_split
from rag_rec.retrieve.base import RetrievalRequest
from rag_rec.settings import Settings
from rag_rec.signals.suite import fit_signals

K = 10


def pool_scaled(model, vocab_ids: list[str]):
    """The alternative: the pool's logits min-max scaled over the pool (0 for what the model must not score)."""
    def feature(rows, anchors, user_id):
        history = list(model.histories.get(user_id, [])) if user_id is not None else []
        query = model.user_vector(history + list(anchors))
        if query is None:
            return None
        excluded = set(anchors) | (set(history) if model.filter_seen else set())
        index = [-1 if vocab_ids[j] in excluded else model._item_index.get(vocab_ids[j], 0) - 1 for j in rows.tolist()]
        logits = np.array([float(model._item_matrix[j] @ query) if j >= 0 else np.nan for j in index])
        scored = ~np.isnan(logits)
        if not scored.any():
            return np.zeros(len(rows))
        lo, hi = logits[scored].min(), logits[scored].max()
        return np.nan_to_num((logits - lo) / (hi - lo) if hi > lo else logits - lo + 1.0, nan=0.0)
    return feature


def run(name: str, epochs: int) -> dict:
    settings = Settings(llm={"backend": "none"}, behaviour={"epochs": epochs})
    if name == "dunnhumby":
        train, cases = basket_completion_split(load_dataset("dunnhumby"), max_cases=1000)
    else:
        train, cases = bundle_completion_split(load_dataset(f"data/amazon-bundles/{name}"))
    t0 = time.perf_counter()
    signals = fit_signals(train, settings, behaviour=True)
    fit_s = time.perf_counter() - t0
    model = signals.behaviour
    hits: dict[str, list[bool]] = {}
    ms: dict[str, float] = {}
    with served_pipeline(settings, train, signals) as pipe:
        retriever = pipe.retriever
        served = retriever.scorer.behaviour_feature
        variants = {"without": (None, served), "catalogue_scaled": (model, served),
                    "pool_scaled": (model, pool_scaled(model, signals.vocab.ids))}
        for variant, (behaviour, feature) in variants.items():
            signals.behaviour, retriever.scorer.behaviour_feature = behaviour, feature
            start = time.perf_counter()
            hits[variant] = [case.target in [c.id for c in retriever.retrieve(
                RetrievalRequest(user_id=case.user_id, anchors=tuple(case.anchors), k=K)).candidates]
                for case in cases]
            ms[variant] = 1000 * (time.perf_counter() - start) / len(cases)
        signals.behaviour, retriever.scorer.behaviour_feature = model, served
    base = np.array(hits["without"])
    out = {"cases": len(cases), "epochs": epochs, "fit_signals_s": round(fit_s, 1),
           "with_user": sum(c.user_id is not None for c in cases)}
    for variant, got in hits.items():
        got = np.array(got)
        out[variant] = {f"recall@{K}": float(got.mean()), "ms_per_request": round(ms[variant], 2)}
        if variant != "without":
            out[variant].update(wins=int((got & ~base).sum()), losses=int((~got & base).sum()))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="*", default=["dunnhumby", "electronic", "clothing"])
    parser.add_argument("--epochs", type=int, default=Settings().behaviour.epochs)
    args = parser.parse_args()
    save("served_behaviour", {name: run(name, args.epochs) for name in args.datasets})
