import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def electronic_dir() -> Path:
    return DATA / "amazon-bundles" / "electronic"


@pytest.fixture(scope="session")
def clothing_dir() -> Path:
    return DATA / "amazon-bundles" / "clothing"


@pytest.fixture(scope="session")
def aicl_electronic() -> Path:
    return DATA / "aicl-split" / "electronic.json"


@pytest.fixture(scope="session")
def electronic(electronic_dir):
    from rag_rec.data.amazon import load_amazon_bundles

    return load_amazon_bundles(electronic_dir)


class PlainQuestions:
    """Plain chat questions and the word a working chat path answers them with. A path with a broken template or
    sampling answers none; one answer may flip with the CPU's float precision (SmolLM2-135M in bfloat16, native
    AVX512-BF16 included, answers the first with "L'Étoile, la Marseillaise, ..."), so `check` requires all but one."""

    asked = (("What is the capital of France?", "Paris"), ("Name the capital city of Italy.", "Rome"),
             ("What is 2 + 2?", "4"))

    def requests(self, max_tokens: int = 24) -> list:
        from rag_rec.llm.base import GenerationRequest

        return [GenerationRequest([{"role": "user", "content": q}], max_tokens=max_tokens) for q, _ in self.asked]

    def check(self, answers) -> None:
        right = [word in a.text for (_, word), a in zip(self.asked, answers, strict=True)]
        assert sum(right) >= len(self.asked) - 1, [a.text for a in answers]


@pytest.fixture(scope="session")
def plain_questions() -> PlainQuestions:
    return PlainQuestions()
