"""Does a complement-tuned encoder help the hybrid once its weight is chosen on validation?

complement_encoder.py (session 5) put the tuned MiniLM in place of the packaged one at the default weights: text
alone 0.165 -> 0.193 on electronic, but the hybrid 0.207 -> 0.196. Here the tuned encoder's cosine is a feature of
its own (`tuned`, mean-anchor query, and `tuned_max`, the best anchor, computed as the hybrid computes `text` and
`text_max`), added beside the packaged encoder's or put in place of it, at weights chosen on a validation split.
The encoder is tuned twice: on the validation split's inner training bundles (to choose) and on the full training
bundles (to score the test cases), so no bundle that scores a choice reached the tuning behind it.

    .venv/bin/python eval/experiments/complement_feature.py electronic [epochs]   # writes eval/results/experiments/
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from complement_encoder import bundle_pairs, tune_encoder
from fusion_weights import FEATURES, case_features, recall_at, save

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split
from rag_rec.retrieve.hybrid import anchor_text_features
from rag_rec.retrieve.rankers import HybridRanker
from rag_rec.settings import Settings

WEIGHTS = (0.25, 0.5, 1.0, 2.0)
COLUMNS = [*FEATURES, "lex", "tuned", "tuned_max"]


def scored_cases(settings: Settings, train, cases, products, epochs: int, workdir: Path, name: str) -> list:
    pairs = bundle_pairs(train, products)
    started = time.time()
    model = tune_encoder(pairs, products, epochs, str(workdir / name))
    print(f"{name}: {len(pairs)} pairs tuned in {time.time() - started:.0f}s", flush=True)
    ranker = HybridRanker(settings).fit(train)
    vectors = model.encode([products[i].text() for i in ranker.vocab.ids], batch_size=64, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=True).astype(np.float32)
    out = []
    for item in case_features(ranker, cases, [*FEATURES, "lex"]):
        if item is None:
            out.append(None)
            continue
        matrix, target, anchors, tie = item
        tuned = anchor_text_features(vectors, vectors[anchors])
        out.append((np.vstack([matrix, tuned["text"], tuned["text_max"]]), target, anchors, tie))
    return out


def weight_rows(settings: Settings) -> dict[str, np.ndarray]:
    default = np.array([settings.retrieve.weights.get(f, 0.0) for f in COLUMNS])
    rows = {"hybrid_default": default}
    text_cols = [COLUMNS.index("text"), COLUMNS.index("text_max")]
    tuned_cols = [COLUMNS.index("tuned"), COLUMNS.index("tuned_max")]
    rows["text_alone"] = np.eye(len(COLUMNS))[COLUMNS.index("text")]
    rows["tuned_alone"] = np.eye(len(COLUMNS))[COLUMNS.index("tuned")]
    rows["lexical_alone"] = np.eye(len(COLUMNS))[COLUMNS.index("lex")]
    for w in WEIGHTS:
        added = default.copy()
        added[tuned_cols] = w * default[text_cols]
        rows[f"added_at_{w:g}"] = added
        replaced = added.copy()
        replaced[text_cols] = 0.0
        rows[f"replacing_at_{w:g}"] = replaced
    return rows


def main(domain: str, epochs: int = 1) -> dict:
    torch.set_num_threads(2)
    settings = Settings(llm={"backend": "none"})
    dataset = load_dataset(f"data/amazon-bundles/{domain}")
    train, test_cases = bundle_completion_split(dataset)
    inner_train, valid_cases = bundle_completion_split(train, seed=1)
    rows = weight_rows(settings)
    matrix = np.vstack(list(rows.values()))
    with tempfile.TemporaryDirectory() as tmp:
        valid = recall_at(scored_cases(settings, inner_train, valid_cases, dataset.products, epochs, Path(tmp), "valid"),
                          matrix)
        test = recall_at(scored_cases(settings, train, test_cases, dataset.products, epochs, Path(tmp), "test"), matrix)
    candidates = [n for n in rows if n.startswith(("added", "replacing"))] + ["hybrid_default"]
    chosen = max(candidates, key=lambda n: (valid[list(rows).index(n)], n == "hybrid_default"))
    single = {n: float(test[list(rows).index(n)]) for n in ("text_alone", "tuned_alone", "lexical_alone")}
    picked = float(test[list(rows).index(chosen)])
    result = {
        "domain": domain, "epochs": epochs, "validation_cases": len(valid_cases), "test_cases": len(test_cases),
        "features": COLUMNS, "rows": {n: r.tolist() for n, r in rows.items()},
        "validation_recall@10": dict(zip(rows, valid.tolist())), "test_recall@10": dict(zip(rows, test.tolist())),
        "chosen_on_validation": chosen, "test_recall@10_chosen": picked,
        "ratio_to_best_single": picked / max(single.values()),
    }
    return save(f"complement_feature-{domain}", result)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
