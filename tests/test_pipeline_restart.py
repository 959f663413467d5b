"""Restarting the product on an edited catalogue, a corrupt build marker or embedding cache: the index follows."""

import sqlite3

import pytest

from rag_rec.settings import Settings

pytestmark = pytest.mark.slow

KINDS = ["Tents", "Stoves", "Lamps", "Bags", "Mats", "Pots"]


def write_shop(root, price_of_p55="19.99", stock_of_p55="true"):
    root.mkdir(exist_ok=True)
    rows = ["id,title,category,price,in_stock"]
    for n in range(60):
        kind = KINDS[n % len(KINDS)]
        price, stock = (price_of_p55, stock_of_p55) if n == 55 else (f"{10 + n}.00", "true")
        rows.append(f"p{n},Trail {kind[:-1].lower()} model {n},Outdoor > {kind},{price},{stock}")
    (root / "products.csv").write_text("\n".join(rows) + "\n")
    events = [f'{{"user_id": "u{n % 7}", "item_id": "p{n}", "timestamp": {1700000000 + n}, "session_id": "s{n // 3}"}}'
              for n in range(60)]
    (root / "events.jsonl").write_text("\n".join(events) + "\n")


def open_pipeline(tmp_path, root):
    from rag_rec.pipeline import BundlePipeline

    settings = Settings(index={"path": tmp_path / "index"}, llm={"backend": "none"},
                        embedding={"cache_path": tmp_path / "embeddings.sqlite"})
    return BundlePipeline.from_settings(settings, data=f"generic:{root}")


def test_a_restart_on_an_edited_catalogue_reindexes_what_changed_and_skips_an_unchanged_one(tmp_path):
    root = tmp_path / "shop"
    write_shop(root)
    open_pipeline(tmp_path, root).close()
    pipeline = open_pipeline(tmp_path, root)
    try:
        assert pipeline.sync_index() == 0  # the same build: nothing upserted
    finally:
        pipeline.close()
    write_shop(root, price_of_p55="999.00", stock_of_p55="false")  # past the first 50 rows
    pipeline = open_pipeline(tmp_path, root)
    try:
        payload = pipeline.store.retrieve(["p55"])[0].payload
        assert payload["price"] == 999.0 and payload["in_stock"] is False
    finally:
        pipeline.close()


@pytest.mark.parametrize("marker_text", ['{"fingerprint": "ab', "[]", '{"fingerprint": 5}', ""])
def test_a_corrupt_build_marker_means_a_fresh_sync_not_a_crash(tmp_path, marker_text):
    root = tmp_path / "shop"
    write_shop(root)
    open_pipeline(tmp_path, root).close()
    marker = tmp_path / "index" / "products.build.json"
    marker.write_text(marker_text)
    pipeline = open_pipeline(tmp_path, root)
    try:
        assert pipeline.store.count() == 60 and '"fingerprint": "' in marker.read_text()
    finally:
        pipeline.close()
