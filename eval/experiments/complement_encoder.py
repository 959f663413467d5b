"""Does a complement-tuned text encoder help bundle completion?

MiniLM (the packaged all-MiniLM-L6-v2) is fine-tuned on pairs of products that share a bundle in the harness's
training split (symmetric in-batch-negatives loss, batch 64, scale 20, AdamW lr 3e-5, max 64 tokens), saved, and
used as the embedding model of the text ranker and the hybrid (default fusion weights); the same split and cases
as `rag-rec eval bundle_completion`, so the test bundles never reach the tuning. Writes
eval/results/experiments/complement_encoder-<domain>.json.

    .venv/bin/python eval/experiments/complement_encoder.py electronic 1      # domain, epochs (~12 min here)
"""
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from rag_rec.data.registry import load_dataset
from rag_rec.eval.tasks import bundle_completion_split, run_ranking
from rag_rec.retrieve.rankers import HybridRanker, TextRanker
from rag_rec.settings import Settings
from rag_rec.signals.text import _load_sentence_transformer


def bundle_pairs(train, products, use_sessions: bool = False) -> list[tuple[str, str]]:
    """Every pair of products sharing a training bundle (and a training session, when asked)."""
    groups = [list(dict.fromkeys(b.items)) for b in train.bundles]
    if use_sessions:
        groups += [list(dict.fromkeys(s.items)) for s in train.sessions.values()]
    return [(a, b) for g in groups for i, a in enumerate(g) for b in g[i + 1:] if a in products and b in products]


def tune_encoder(pairs: list[tuple[str, str]], products, epochs: int, out: str, *, seed: int = 0):
    """MiniLM fine-tuned on `pairs` (symmetric in-batch negatives), saved to `out`; returns the model."""
    torch.manual_seed(seed)
    model = _load_sentence_transformer("packaged:all-MiniLM-L6-v2", "cpu")
    model.max_seq_length = 64
    text = {p: products[p].text() for a_b in pairs for p in a_b}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5)
    rng = random.Random(seed)
    pairs = list(pairs)
    bs, scale = 64, 20.0
    t0 = time.time()
    model.train()
    for ep in range(epochs):
        rng.shuffle(pairs)
        for start in range(0, len(pairs), bs):
            batch = pairs[start:start + bs]
            if len(batch) < 8:
                continue
            fa = model.tokenize([text[a] for a, _ in batch]); fb = model.tokenize([text[b] for _, b in batch])
            ea = torch.nn.functional.normalize(model(fa)["sentence_embedding"], dim=1)
            eb = torch.nn.functional.normalize(model(fb)["sentence_embedding"], dim=1)
            logits = ea @ eb.T * scale
            labels = torch.arange(len(batch))
            loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            opt.zero_grad(); loss.backward(); opt.step()
            if (start // bs) % 50 == 0:
                print(f"ep {ep} step {start // bs} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    model.save(out)
    return model


def main(domain: str, epochs: int, use_sessions: bool = False) -> dict:
    torch.set_num_threads(2)
    ds = load_dataset(f"data/amazon-bundles/{domain}")
    train, cases = bundle_completion_split(ds)
    pairs = bundle_pairs(train, ds.products, use_sessions)
    print(domain, "pairs", len(pairs), flush=True)
    out = str(Path(tempfile.mkdtemp()) / f"complement-{domain}-{epochs}")
    t0 = time.time()
    tune_encoder(pairs, ds.products, epochs, out)
    train_s = time.time() - t0
    print("train s", train_s, flush=True)
    res = {}
    for name, model_name in (("minilm", "packaged:all-MiniLM-L6-v2"), ("tuned", out)):
        settings = Settings(llm={"backend": "none"}, embedding={"model": model_name})
        for ranker in (TextRanker(settings), HybridRanker(settings)):
            r = run_ranking("bundle_completion", train, cases, ranker)
            res[f"{name}/{ranker.name}"] = r.metrics["recall@10"]
            print(name, ranker.name, r.metrics["recall@10"], flush=True)
    result = {"domain": domain, "epochs": epochs, "pairs": len(pairs), "sessions_as_pairs": use_sessions,
              "tuning_seconds": round(train_s, 1), "recall@10": res}
    target = Path(__file__).resolve().parents[1] / "results" / "experiments" / f"complement_encoder-{domain}.json"
    target.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "sessions")
