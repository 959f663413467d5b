"""The ingest journal: products and events accepted through the API, committed to disk before the API answers
and replayed when the pipeline starts, so a restart (or a kill -9) loses no acknowledged write.

One SQLite file (WAL, synchronous=FULL: a commit survives a power cut). Rows are kept per dataset name, so
a data directory shared by two catalogues never mixes them. Products are kept by id (the last version wins,
as in the index); events are appended with the batch they came in, and replayed batch by batch.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pydantic import ValidationError

from rag_rec.errors import DataError, StorageError
from rag_rec.schemas import EventIn, ProductIn

SCHEMA_VERSION = 1
EXPORT_FILES = ("products.jsonl", "events.jsonl")  # what `export` writes into its folder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS products (
    dataset TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (dataset, id));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, batch INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_dataset ON events (dataset, seq);
CREATE INDEX IF NOT EXISTS products_by_dataset ON products (dataset, seq);
"""


@dataclass
class JournalReplay:
    """What a journal holds for one dataset, validated: products (in write order) and event batches."""

    products: list[ProductIn] = field(default_factory=list)
    event_batches: list[list[EventIn]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # rows that failed validation in lenient mode

    @property
    def events(self) -> int:
        return sum(map(len, self.event_batches))


def journal_file(settings) -> Path | None:
    """Where `settings` keep the ingest journal: data.journal_path, else beside the embedded index; None when off."""
    if not settings.data.journal:
        return None
    return settings.data.journal_path or Path(settings.index.path) / "ingest-journal.sqlite"


class IngestJournal:
    """Append-only record of API writes. Thread-safe; each record_* call is one durable transaction."""

    def __init__(self, path: str | Path, *, read_only: bool = False):
        """Open (creating it unless `read_only`) the journal at `path`; read-only opens change nothing on disk, so a
        backup copy or a read-only volume can be shown and exported."""
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            if read_only:
                self._db = self._read_only()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
            version = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None and not read_only:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif version is not None and int(version[0]) > SCHEMA_VERSION:
                raise DataError(f"written by a newer rag_rec (journal schema {version[0]}, this one reads "
                                f"{SCHEMA_VERSION}): upgrade rag_rec", file=str(self.path))
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise DataError("the ingest journal is locked by another process (one process writes a data "
                                "directory)", file=str(self.path)) from exc
            raise DataError(f"cannot open the ingest journal: {exc}", file=str(self.path)) from exc
        except sqlite3.DatabaseError as exc:  # not a database: it holds acknowledged writes, so never replaced
            raise DataError(f"the ingest journal is damaged ({exc}); it holds products and events the API "
                            "acknowledged: restore it from a backup, or move it aside to start without them",
                            file=str(self.path)) from exc

    def _read_only(self) -> sqlite3.Connection:
        """A connection that writes nothing. SQLite reads a WAL database read-only only where it may create the
        shared-memory file; in a folder this user cannot write, a journal without a write-ahead log (closed
        cleanly, or a copy) is read as an immutable file."""
        if not self.path.is_file():
            raise sqlite3.OperationalError("unable to open database file: it does not exist")
        uri = self.path.resolve().as_uri()
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, timeout=10, isolation_level=None)
        try:
            db.execute("SELECT COUNT(*) FROM meta").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            if Path(f"{self.path}-wal").exists():
                raise sqlite3.OperationalError("its write-ahead log holds writes this user cannot read without write "
                                               "access to the folder: run as the service's user") from None
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False, isolation_level=None)

    def _write(self, statements) -> None:
        """Run `statements(db)` (it executes the writes) as one durable transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    statements(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"the ingest journal {self.path} refused the write ({exc}); nothing of it was "
                                   "stored") from exc

    def record_products(self, dataset: str, products: list[ProductIn]) -> None:
        """Keep these product versions (one transaction; the last version of an id wins)."""
        def write(db: sqlite3.Connection) -> None:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM products").fetchone()[0]
            db.executemany("INSERT OR REPLACE INTO products (dataset, id, seq, body) VALUES (?, ?, ?, ?)",
                           [(dataset, p.id, seq + n + 1, p.model_dump_json()) for n, p in enumerate(products)])
        self._write(write)

    def record_events(self, dataset: str, events: list[EventIn]) -> None:
        """Append one batch of events (timestamps filled in by the caller, so a replay sees the same ones)."""
        def write(db: sqlite3.Connection) -> None:
            batch = db.execute("SELECT COALESCE(MAX(batch), 0) FROM events").fetchone()[0] + 1
            db.executemany("INSERT INTO events (dataset, batch, body) VALUES (?, ?, ?)",
                           [(dataset, batch, e.model_dump_json()) for e in events])
        self._write(write)

    def _rows(self, sql: str, params: tuple) -> Iterator[tuple]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        yield from rows

    def replay(self, dataset: str, *, strict: bool = True) -> JournalReplay:
        """Everything recorded for `dataset`, validated against the API models. A row that no longer validates
        is a DataError naming it (strict), or is skipped and listed (kept in the journal either way)."""
        out = JournalReplay()

        def parse(model, table: str, seq: int, body: str):
            try:
                return model.model_validate_json(body)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "body"
                message = f"{table} row seq={seq} of dataset {dataset!r} does not validate: {first['msg']}"
                if strict:
                    raise DataError(message + " (set data.strict=false to start without it)",
                                    file=str(self.path), row=seq, field=where) from None
                out.skipped.append(f"{message} (field '{where}')")
                return None

        for seq, body in self._rows("SELECT seq, body FROM products WHERE dataset = ? ORDER BY seq", (dataset,)):
            product = parse(ProductIn, "products", seq, body)
            if product is not None:
                out.products.append(product)
        batch_of: dict[int, list[EventIn]] = {}
        for seq, batch, body in self._rows("SELECT seq, batch, body FROM events WHERE dataset = ? ORDER BY seq",
                                           (dataset,)):
            event = parse(EventIn, "events", seq, body)
            if event is not None:
                batch_of.setdefault(batch, []).append(event)
        out.event_batches = list(batch_of.values())
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """{dataset: {"products": n, "events": m}} for every dataset the journal holds."""
        out: dict[str, dict[str, int]] = {}
        for dataset, n in self._rows("SELECT dataset, COUNT(*) FROM products GROUP BY dataset", ()):
            out.setdefault(dataset, {"products": 0, "events": 0})["products"] = n
        for dataset, n in self._rows("SELECT dataset, COUNT(*) FROM events GROUP BY dataset", ()):
            out.setdefault(dataset, {"products": 0, "events": 0})["events"] = n
        return out

    def export(self, dataset: str, out_dir: str | Path) -> tuple[Path, Path]:
        """products.jsonl and events.jsonl (one API object a line, the shapes /v1/products and /v1/events take)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = tuple(out_dir / name for name in EXPORT_FILES)
        queries = ("SELECT body FROM products WHERE dataset = ? ORDER BY seq",
                   "SELECT body FROM events WHERE dataset = ? ORDER BY seq")
        for path, sql in zip(paths, queries):
            tmp = path.with_suffix(".jsonl.tmp")
            with tmp.open("w", encoding="utf-8") as f:
                for (body,) in self._rows(sql, (dataset,)):
                    f.write(json.dumps(json.loads(body), ensure_ascii=False) + "\n")
            tmp.replace(path)
        return paths

    def clear(self, dataset: str) -> dict[str, int]:
        """Drop what the journal holds for `dataset` (after the shop's export includes it); the counts dropped."""
        before = self.counts().get(dataset, {"products": 0, "events": 0})
        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM products WHERE dataset = ?", (dataset,))
            db.execute("DELETE FROM events WHERE dataset = ?", (dataset,))
        self._write(write)
        return before

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "IngestJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
