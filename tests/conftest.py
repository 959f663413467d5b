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
