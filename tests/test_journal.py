"""The ingest journal: API writes are durable before they are applied and come back after a restart."""

import json
import sqlite3

import pytest

from rag_rec.data.journal import IngestJournal, journal_file
from rag_rec.errors import DataError, StorageError
from rag_rec.schemas import EventIn, EventsIn, ProductIn, ProductsIn
from rag_rec.settings import Settings


def product(pid, title="Trail lamp", **fields):
    return ProductIn(id=pid, title=title, **fields)


def test_products_keep_their_last_version_and_events_their_batches(tmp_path):
    with IngestJournal(tmp_path / "j.sqlite") as journal:
        journal.record_products("shop", [product("a", price=5.0), product("b")])
        journal.record_products("shop", [product("a", "Trail lamp v2", price=7.5)])
        journal.record_events("shop", [EventIn(user_id="u1", item_id="a", timestamp=1, session_id="s")])
        journal.record_events("shop", [EventIn(user_id="u1", item_id="b", timestamp=2),
                                        EventIn(user_id="u2", item_id="a", timestamp=3, event="return")])
    with IngestJournal(tmp_path / "j.sqlite") as journal:  # reopened: it was on disk
        replay = journal.replay("shop")
        assert [(p.id, p.title, p.price) for p in replay.products] == [("b", "Trail lamp", None),
                                                                        ("a", "Trail lamp v2", 7.5)]
        assert [[(e.item_id, e.timestamp, e.event) for e in batch] for batch in replay.event_batches] == [
            [("a", 1, "purchase")], [("b", 2, "purchase"), ("a", 3, "return")]]
        assert journal.counts() == {"shop": {"products": 2, "events": 3}}


def test_each_dataset_replays_only_its_own_rows(tmp_path):
    with IngestJournal(tmp_path / "j.sqlite") as journal:
        journal.record_products("amazon-electronic", [product("a")])
        journal.record_events("amazon-clothing", [EventIn(user_id="u", item_id="c", timestamp=1)])
        assert [p.id for p in journal.replay("amazon-electronic").products] == ["a"]
        assert journal.replay("amazon-electronic").event_batches == []
        assert journal.replay("amazon-clothing").events == 1


def test_a_refused_write_stores_nothing_and_says_so(tmp_path):
    path = tmp_path / "j.sqlite"
    with IngestJournal(path) as journal:
        journal.record_events("shop", [EventIn(user_id="u", item_id="a", timestamp=1)])
    db = sqlite3.connect(path)  # a write that fails halfway through the batch, as a full disk would
    db.execute("CREATE TRIGGER full BEFORE INSERT ON events WHEN NEW.body LIKE '%\"b\"%' "
               "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    db.commit()
    db.close()
    with IngestJournal(path) as journal:
        with pytest.raises(StorageError, match="disk is full.*nothing of it was stored"):
            journal.record_events("shop", [EventIn(user_id="u", item_id="a", timestamp=2),
                                            EventIn(user_id="u", item_id="b", timestamp=3)])
        assert journal.replay("shop").events == 1


def test_a_damaged_journal_is_an_error_naming_it_and_is_left_as_it_was(tmp_path):
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"not a database, but someone's acknowledged writes" * 100)
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"j\.sqlite.*damaged.*restore it"):
        IngestJournal(path)
    assert path.read_bytes() == before


def test_a_row_that_no_longer_validates_names_its_row_and_field(tmp_path):
    path = tmp_path / "j.sqlite"
    with IngestJournal(path) as journal:
        journal.record_products("shop", [product("a"), product("b")])
    db = sqlite3.connect(path)
    db.execute("UPDATE products SET body = ? WHERE id = 'b'", (json.dumps({"id": "b", "title": "x", "price": -1}),))
    db.commit()
    db.close()
    with IngestJournal(path) as journal:
        with pytest.raises(DataError, match=r"row 2.*field 'price'.*data.strict=false"):
            journal.replay("shop")
        lenient = journal.replay("shop", strict=False)
        assert [p.id for p in lenient.products] == ["a"] and "price" in lenient.skipped[0]
        assert journal.counts()["shop"]["products"] == 2  # kept in the journal


def test_a_journal_from_a_newer_release_is_not_read(tmp_path):
    path = tmp_path / "j.sqlite"
    IngestJournal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(DataError, match="newer rag_rec"):
        IngestJournal(path)


def test_export_writes_api_shaped_lines_and_clear_drops_one_dataset(tmp_path):
    with IngestJournal(tmp_path / "j.sqlite") as journal:
        journal.record_products("shop", [product("a", "Lampe à pétrole")])
        journal.record_products("other", [product("z")])
        journal.record_events("shop", [EventIn(user_id="u", item_id="a", timestamp=9)])
        products_path, events_path = journal.export("shop", tmp_path / "out")
        assert ProductsIn(products=[json.loads(line) for line in products_path.read_text("utf-8").splitlines()])
        assert "Lampe à pétrole" in products_path.read_text("utf-8")
        assert EventsIn(events=[json.loads(line) for line in events_path.read_text().splitlines()]).events[0].timestamp == 9
        assert journal.clear("shop") == {"products": 1, "events": 1}
        assert journal.counts() == {"other": {"products": 1, "events": 0}}


def test_the_journal_lives_beside_the_index_unless_settings_say_otherwise(tmp_path):
    assert journal_file(Settings(index={"path": tmp_path / "idx"})) == tmp_path / "idx" / "ingest-journal.sqlite"
    assert journal_file(Settings(data={"journal_path": tmp_path / "j.sqlite"})) == tmp_path / "j.sqlite"
    assert journal_file(Settings(data={"journal": False})) is None


# ---- through the pipeline ----

KINDS = ["Tents", "Stoves", "Lamps", "Bags", "Mats", "Pots"]


def write_shop(root):
    root.mkdir(exist_ok=True)
    rows = ["id,title,category,price,in_stock"]
    rows += [f"p{n},Trail {KINDS[n % 6][:-1].lower()} model {n},Outdoor > {KINDS[n % 6]},{10 + n}.00,true"
             for n in range(60)]
    (root / "products.csv").write_text("\n".join(rows) + "\n")
    events = [f'{{"user_id": "u{n % 7}", "item_id": "p{n}", "timestamp": {1700000000 + n}, "session_id": "s{n // 3}"}}'
              for n in range(60)]
    (root / "events.jsonl").write_text("\n".join(events) + "\n")


def open_pipeline(tmp_path, **sections):
    from rag_rec.pipeline import BundlePipeline

    settings = Settings(index={"path": tmp_path / "index"}, llm={"backend": "none"},
                        embedding={"cache_path": tmp_path / "embeddings.sqlite"}, **sections)
    return BundlePipeline.from_settings(settings, data=f"generic:{tmp_path / 'shop'}")


def state(pipeline):
    """What the API-ingested writes changed, as a client could observe it."""
    s = pipeline.signals
    return {
        "products": len(pipeline.dataset.products),
        "indexed": pipeline.store.count(),
        "api-1": pipeline.product("API-1").model_dump() if pipeline.product("API-1") else None,
        "p3 price": pipeline.dataset.products["p3"].price,
        "p3 payload": pipeline.store.retrieve(["p3"])[0].payload["price"],
        "events": len(pipeline.interactions),
        "popularity": [float(s.popularity.counts[s.vocab.index[i]]) if i in s.vocab.index else None
                       for i in ("p1", "p2", "API-1")],
        "partners of p1": sorted(s.cooc.top_partners([s.vocab.index["p1"]], 5)[0].tolist()),
        "history": pipeline._history.get("shopper"),
    }


@pytest.mark.slow
def test_api_writes_survive_a_restart_exactly(tmp_path):
    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path)
    try:
        before_writes = state(pipeline)
        pipeline.add_products(ProductsIn(products=[product("API-1", "Trail lantern with dimmer", price=12.0,
                                                           category=["Outdoor", "Lamps"]),
                                                   product("p3", "Trail bag model 3", price=99.0,
                                                           category=["Outdoor", "Bags"])]))
        pipeline.add_events(EventsIn(events=[EventIn(user_id="shopper", item_id=i, session_id="new-session")
                                             for i in ("p1", "API-1", "p2")]))
        pipeline.add_events(EventsIn(events=[EventIn(user_id="shopper", item_id="p2", event="return")]))
        live = state(pipeline)
    finally:
        pipeline.close()
    assert live != before_writes and live["products"] == 61 and live["p3 payload"] == 99.0

    restarted = open_pipeline(tmp_path)
    try:
        assert state(restarted) == live
        assert restarted.health()["journal"].endswith("ingest-journal.sqlite")
    finally:
        restarted.close()


@pytest.mark.slow
def test_a_write_the_journal_refuses_changes_nothing(tmp_path):
    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path)
    try:
        db = sqlite3.connect(pipeline.journal.path)
        db.execute("CREATE TRIGGER full BEFORE INSERT ON products BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
        db.execute("CREATE TRIGGER full_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
        db.commit()
        db.close()
        before = state(pipeline)
        with pytest.raises(StorageError):
            pipeline.add_products(ProductsIn(products=[product("API-1", "Trail lantern"), product("p3", "Renamed")]))
        with pytest.raises(StorageError):
            pipeline.add_events(EventsIn(events=[EventIn(user_id="shopper", item_id="p1", session_id="x")]))
        assert state(pipeline) == before
    finally:
        pipeline.close()


@pytest.mark.slow
def test_without_the_journal_a_restart_starts_from_the_dataset(tmp_path):
    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path, data={"journal": False})
    try:
        assert pipeline.journal is None
        pipeline.add_products(ProductsIn(products=[product("API-1", "Trail lantern")]))
    finally:
        pipeline.close()
    restarted = open_pipeline(tmp_path, data={"journal": False})
    try:
        assert "API-1" not in restarted.dataset.products and restarted.store.count() == 60
        assert not (tmp_path / "index" / "ingest-journal.sqlite").exists()
    finally:
        restarted.close()


def test_the_journal_command_shows_exports_and_clears(tmp_path, capsys):
    from rag_rec.cli import main

    config = tmp_path / "rag.json"
    config.write_text(json.dumps({"index": {"path": str(tmp_path / "idx")}}))
    assert main(["--config", str(config), "journal"]) == 0
    assert "no journal yet" in capsys.readouterr().out
    with IngestJournal(tmp_path / "idx" / "ingest-journal.sqlite") as journal:
        journal.record_products("shop", [product("a"), product("b")])
        journal.record_events("shop", [EventIn(user_id="u", item_id="a", timestamp=1)])
    assert main(["--config", str(config), "journal"]) == 0
    assert "shop: 2 products, 1 events" in capsys.readouterr().out
    assert main(["--config", str(config), "journal", "export", "--dataset", "shop"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--config", str(config), "journal", "clear", "--dataset", "shoe"]) == 2
    assert "holds: shop" in capsys.readouterr().err
    assert main(["--config", str(config), "journal", "export", "--dataset", "shop", "--out", str(tmp_path / "x")]) == 0
    assert len((tmp_path / "x" / "products.jsonl").read_text().splitlines()) == 2
    assert main(["--config", str(config), "journal", "clear", "--dataset", "shop"]) == 0
    assert "dropped 2 products and 1 events" in capsys.readouterr().out
    assert main(["--config", str(config), "journal"]) == 0
    assert "empty" in capsys.readouterr().out
