"""The benchmarks' bare baselines do the work the product path does against the engine, no more and no less."""

import importlib.util
import re
import sys

import numpy as np
import pytest
from test_journal import open_pipeline, write_shop

from rag_rec.index import Filter
from rag_rec.retrieve.base import RetrievalRequest

VECTOR = re.compile(r"query=\[([^\]]*)\]")


def load_bench(repo_root, name):
    sys.path.insert(0, str(repo_root / "bench"))
    spec = importlib.util.spec_from_file_location(f"rag_rec_{name}", repo_root / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingShard:
    def __init__(self, shard, seen):
        self.shard, self.seen = shard, seen

    def query(self, request):
        self.seen.append(request)
        return self.shard.query(request)

    def __getattr__(self, name):
        return getattr(self.shard, name)


@pytest.mark.slow
def test_the_bare_retrieval_query_is_the_retrievers_engine_request(tmp_path, repo_root, monkeypatch):
    bench = load_bench(repo_root, "bench_retrieval")
    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path)
    try:
        store, seen = pipeline.store, []
        shard = store._open_shard()
        monkeypatch.setattr(store, "_open_shard", lambda: RecordingShard(shard, seen))
        flt = Filter(must_match={"in_stock": True})
        bare = bench.bare_query(store, pipeline.signals, pipeline.retriever, pipeline.settings, flt)
        anchor = "p4"
        pipeline.retriever.retrieve(RetrievalRequest(anchors=(anchor,), filter=flt, k=10))
        bare(anchor)
        assert len(seen) == 2
        product, baseline = map(repr, seen)
        assert VECTOR.sub("query=[v]", product) == VECTOR.sub("query=[v]", baseline)  # branches, k, weights, filter
        assert "weights=" in product
        for a, b in zip(VECTOR.findall(product), VECTOR.findall(baseline)):
            x, y = np.array(a.split(","), dtype=float), np.array(b.split(","), dtype=float)
            assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) == pytest.approx(1.0, abs=1e-6)  # same direction
    finally:
        pipeline.close()
