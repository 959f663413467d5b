"""Can the LLM say what goes with the anchors, and does that help bundle completion? (HyDE-style expansion)

For each bundle-completion case the LLM (vLLM, a small Qwen on CPU) is asked to name products a shopper buys
together with the anchors — complements, not alternatives. Its answer becomes the retriever's `need`: a text
vector (MiniLM) and a lexical query (TF-IDF over titles), each scored against every catalogue item and added to
the hybrid's default fusion at several weights. The weight is picked on a validation re-split of the training
data and then applied to the test cases; the best test weight is reported too (an oracle, for scale).

    .venv/bin/python eval/experiments/llm_complement_query.py electronic [--model qwen2.5-coder-0.5b]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = ("A shopper is buying: {items}.\nName 5 different products (not the ones above, and not alternatives to "
          "them) that they would buy together with it to complete a bundle, such as accessories. Answer with short "
          "generic product names separated by semicolons, nothing else.")
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def expansions(llm, products, cases) -> list[str]:
    from rag_rec.llm.base import GenerationRequest

    prompts, slots = [], []
    for n, case in enumerate(cases):
        titles = [products[a].title for a in case.anchors if a in products and products[a].title]
        if titles:
            prompts.append(GenerationRequest([{"role": "user", "content": PROMPT.format(items="; ".join(titles[:3]))}],
                                             max_tokens=48, temperature=0.0, repetition_penalty=1.1))
            slots.append(n)
    texts = [""] * len(cases)
    for start in range(0, len(prompts), 32):
        for n, g in zip(slots[start:start + 32], llm.generate(prompts[start:start + 32])):
            texts[n] = g.text.strip()
        print(f"  {min(start + 32, len(prompts))}/{len(prompts)} generated", flush=True)
    return texts


def case_matrices(ranker, cases, texts):
    from fusion_weights import FEATURES, case_features

    from rag_rec.signals.lexical import tokens

    features = [*FEATURES, "lex"]
    s = ranker.signals
    out = []
    for item, text in zip(case_features(ranker, cases, features), texts):
        if item is None:
            out.append(None)
            continue
        matrix, target, anchors, tie = item
        dense = lexical = np.zeros(matrix.shape[1])
        if text:
            need = s.encoder.encode([text])[0]
            dense = s.text_vectors @ need
            terms = s.lexical._rows([tokens(text)])
            if terms.nnz:
                lexical = np.asarray(s.lexical.matrix @ terms.T.toarray()).ravel()
        out.append((np.vstack([matrix, dense[None], lexical[None]]), target, anchors, tie))
    return out, features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("domain", nargs="?", default="electronic")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from fusion_weights import recall_at, save

    from rag_rec.data.registry import load_dataset
    from rag_rec.eval.tasks import bundle_completion_split
    from rag_rec.llm import make_llm
    from rag_rec.retrieve.rankers import HybridRanker
    from rag_rec.settings import Settings

    settings = Settings(llm={"backend": "vllm", "model": args.model})
    data = load_dataset(f"data/amazon-bundles/{args.domain}")
    train, test_cases = bundle_completion_split(data)
    inner_train, valid_cases = bundle_completion_split(train, seed=1)
    t0 = time.perf_counter()
    llm = make_llm(settings.llm)
    valid_texts = expansions(llm, data.products, valid_cases)
    test_texts = expansions(llm, data.products, test_cases)
    llm.close()
    gen_s = time.perf_counter() - t0
    ranking = Settings(llm={"backend": "none"})
    valid, features = case_matrices(HybridRanker(ranking).fit(inner_train), valid_cases, valid_texts)
    test, _ = case_matrices(HybridRanker(ranking).fit(train), test_cases, test_texts)
    default = np.array([ranking.retrieve.weights.get(f, 0.0) for f in features])
    grid = np.array([np.r_[default, wd, wl] for wd in WEIGHTS for wl in WEIGHTS])
    valid_recall, test_recall = recall_at(valid, grid), recall_at(test, grid)
    picked = int(np.argmax(valid_recall))
    alone = np.zeros((2, len(features) + 2))
    alone[0, -2] = alone[1, -1] = 1.0
    alone_recall = recall_at(test, alone)
    lexical_alone = recall_at(test, np.eye(len(features) + 2)[[len(features) - 1]])[0]
    result = {
        "domain": args.domain, "model": args.model, "test_cases": len(test_cases), "validation_cases": len(valid_cases),
        "generation_s": round(gen_s, 1), "prompt": PROMPT, "examples": test_texts[:8],
        "test_recall@10": {"hybrid_default": float(test_recall[0]), "lexical_alone": float(lexical_alone),
                           "expansion_text_alone": float(alone_recall[0]),
                           "expansion_lexical_alone": float(alone_recall[1]),
                           "hybrid_plus_expansion_validation_picked": float(test_recall[picked]),
                           "hybrid_plus_expansion_oracle": float(test_recall.max())},
        "validation_picked_weights": {"expansion_text": float(grid[picked, -2]), "expansion_lexical": float(grid[picked, -1])},
    }
    result["ratio_to_best_single"] = result["test_recall@10"]["hybrid_plus_expansion_validation_picked"] / lexical_alone
    save(f"llm_complement_query-{args.domain}-{args.model}", result)


if __name__ == "__main__":
    main()
