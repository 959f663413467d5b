"""The ingest journal: API writes are durable before they are applied and come back after a restart."""

import json
import os
import shutil
import sqlite3
import sys

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
        "partners of p4": sorted(s.cooc.top_partners([s.vocab.index["p4"]], 5)[0].tolist()),
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
        pipeline.add_events(EventsIn(events=[EventIn(user_id="shopper", item_id=i, session_id="new-session")
                                             for i in ("p4", "p5")]))  # the same session later: its own group
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
    assert main(["--config", str(config), "journal", "clear", "--dataset", "shop", "--yes"]) == 0
    assert "dropped 2 products and 1 events" in capsys.readouterr().out
    assert main(["--config", str(config), "journal"]) == 0
    assert "empty" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("then", ["clear the journal", "turn the journal off"])
def test_an_api_change_to_the_index_is_synced_away_when_the_journal_no_longer_holds_it(tmp_path, then):
    from rag_rec.cli import main

    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path)
    try:
        pipeline.add_products(ProductsIn(products=[product("p3", "Trail bag model 3", price=999.0, in_stock=False,
                                                           category=["Outdoor", "Bags"])]))
        assert pipeline.store.retrieve(["p3"])[0].payload["price"] == 999.0
    finally:
        pipeline.close()
    sections = {}
    if then == "clear the journal":
        config = tmp_path / "rag.json"
        config.write_text(json.dumps({"index": {"path": str(tmp_path / "index")}}))
        assert main(["--config", str(config), "journal", "clear", "--dataset", "shop", "--yes"]) == 0
    else:
        sections = {"data": {"journal": False}}
    restarted = open_pipeline(tmp_path, **sections)
    try:
        assert restarted.dataset.products["p3"].price == 13.0
        payload = restarted.store.retrieve(["p3"])[0].payload
        assert (payload["price"], payload["in_stock"]) == (13.0, True)  # the index follows the catalogue again
    finally:
        restarted.close()


@pytest.mark.slow
def test_a_long_journal_replays_in_one_update(tmp_path, monkeypatch):
    from rag_rec.signals.als import ALSScorer

    write_shop(tmp_path / "shop")
    pipeline = open_pipeline(tmp_path)
    try:
        for n in range(300):  # one event a call, as a shop's click stream posts them
            pipeline.add_events(EventsIn(events=[EventIn(user_id=f"u{n % 9}", item_id=f"p{n % 60}",
                                                         session_id=f"s{n // 2}")]))
        live = state(pipeline)
    finally:
        pipeline.close()
    calls = []
    original = ALSScorer.fold_in_many
    monkeypatch.setattr(ALSScorer, "fold_in_many", lambda self, events: calls.append(len(events)) or original(self, events))
    restarted = open_pipeline(tmp_path)
    try:
        assert calls == [300] and state(restarted) == live
    finally:
        restarted.close()


def test_journaled_events_the_dataset_also_holds_are_counted():
    from rag_rec.data.models import Interactions
    from rag_rec.pipeline import journaled_events_in
    import pandas as pd

    held = Interactions(pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [5, 6]}))
    batches = [[EventIn(user_id="u1", item_id="a", timestamp=5), EventIn(user_id="u1", item_id="a", timestamp=7)],
               [EventIn(user_id="u2", item_id="b", timestamp=6)]]
    assert journaled_events_in(held, batches) == 2
    assert journaled_events_in(held, []) == 0


def test_export_and_clear_name_what_they_need(tmp_path, capsys):
    from rag_rec.cli import main

    config = tmp_path / "rag.json"
    config.write_text(json.dumps({"index": {"path": str(tmp_path / "idx")}}))
    for argv, message in ((["journal", "export"], "needs --dataset"), (["journal", "clear"], "needs --dataset"),
                          (["journal", "export", "--dataset", "shop"], "needs --out"),
                          (["journal", "export", "--dataset", "shop", "--out", str(tmp_path / "o")], "no ingest journal")):
        assert main(["--config", str(config), *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_show_and_export_read_a_journal_this_user_cannot_write():
    import subprocess
    import tempfile
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="rag-rec-ro-"))  # pytest's own folders are private to root
    try:
        folder = tmp_path / "ro"
        with IngestJournal(folder / "ingest-journal.sqlite") as journal:
            journal.record_products("shop", [product("a")])
        for path in (tmp_path, folder, *folder.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        config = tmp_path / "rag.json"
        config.write_text(json.dumps({"index": {"path": str(folder)}}))
        config.chmod(0o644)
        out = tmp_path / "out"
        out.mkdir()
        out.chmod(0o777)
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        for argv in (["journal"], ["journal", "export", "--dataset", "shop", "--out", str(out)]):
            run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                                  "rag_rec.cli", "--config", str(config), *argv], capture_output=True, text=True,
                                 env={**os.environ, "HOME": str(out)}, timeout=120)
            assert run.returncode == 0, run.stderr
        assert (out / "products.jsonl").read_text().count("\n") == 1
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
