"""Starting the product: on an edited catalogue or a corrupt build marker the index follows; catalogues it cannot
use give errors naming why; events without ALS weights and lenient cleaning still start it."""


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


def open_pipeline(tmp_path, root, rebuild=False, **sections):
    from rag_rec.pipeline import BundlePipeline

    settings = Settings(index={"path": tmp_path / "index"}, llm={"backend": "none"},
                        embedding={"cache_path": tmp_path / "embeddings.sqlite"}, **sections)
    return BundlePipeline.from_settings(settings, data=f"generic:{root}", rebuild=rebuild)


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


def test_an_empty_catalogue_is_an_error_naming_it(tmp_path):
    from rag_rec.errors import DataError

    root = tmp_path / "shop"
    root.mkdir()
    (root / "products.csv").write_text("id,title\n")
    with pytest.raises(DataError, match="no products"):
        open_pipeline(tmp_path, root)


def test_events_without_als_weights_start_the_product_without_cf(tmp_path):
    root = tmp_path / "shop"
    write_shop(root)
    lines = (root / "events.jsonl").read_text().splitlines()
    (root / "events.jsonl").write_text("\n".join(line[:-1] + ', "event": "click"}' for line in lines) + "\n")
    pipeline = open_pipeline(tmp_path, root)
    try:
        assert pipeline.signals.als is None
        from rag_rec.schemas import BundleRequest

        assert pipeline.recommend(BundleRequest(anchor_items=["p0"], use_llm=False)).bundles
    finally:
        pipeline.close()


def test_lenient_cleaning_writes_the_quarantine_where_settings_say(tmp_path):
    root = tmp_path / "shop"
    write_shop(root)
    with open(root / "events.jsonl", "a") as fh:
        fh.write('{"user_id": "u1", "item_id": "no-such-product", "timestamp": 1700000000}\n')
    pipeline = open_pipeline(tmp_path, root, data={"strict": False, "quarantine_dir": tmp_path / "quarantine"})
    pipeline.close()
    quarantine = (tmp_path / "quarantine" / "quarantine.csv").read_text()
    assert "no-such-product" in quarantine and "item_id" in quarantine


def test_a_rebuild_recreates_an_index_of_another_layout(tmp_path):
    from rag_rec.errors import IncompatibleIndexError

    root = tmp_path / "shop"
    write_shop(root)
    open_pipeline(tmp_path, root).close()
    with pytest.raises(IncompatibleIndexError, match="rag-rec index"):
        open_pipeline(tmp_path, root, cf={"als_factors": 8})
    pipeline = open_pipeline(tmp_path, root, rebuild=True, cf={"als_factors": 8})  # what `rag-rec index` does
    pipeline.close()
    pipeline = open_pipeline(tmp_path, root, cf={"als_factors": 8})
    try:
        assert pipeline.store.count() == 60 and pipeline.store.vectors["cf"].dim == 8
        assert pipeline.sync_index() == 0
    finally:
        pipeline.close()


def test_a_replica_starting_on_a_shared_qdrant_keeps_what_others_ingested(tmp_path):
    from rag_rec.pipeline import BundlePipeline
    from rag_rec.schemas import ProductIn, ProductsIn

    root = tmp_path / "shop"
    write_shop(root)
    def replica(name):  # each replica its own ingest journal, as each pod its own volume
        return Settings(index={"backend": "qdrant", "path": tmp_path / "qdrant"}, llm={"backend": "none"},
                        embedding={"cache_path": tmp_path / "embeddings.sqlite"},
                        data={"journal_path": tmp_path / f"journal-{name}.sqlite"})

    first = BundlePipeline.from_settings(replica("a"), data=f"generic:{root}")
    first.add_products(ProductsIn(products=[ProductIn(id="API-1", title="Trail lamp added by a replica")]))
    first.close()
    settings = replica("b")
    second = BundlePipeline.from_settings(settings, data=f"generic:{root}")  # a scale-up or a rolling update
    try:
        assert second.store.count() == 61
    finally:
        second.close()
    rebuilt = BundlePipeline.from_settings(settings, data=f"generic:{root}", rebuild=True)  # rag-rec index
    try:
        assert rebuilt.store.count() == 60
    finally:
        rebuilt.close()
