"""Loader for the Sun et al. (SIGIR 2022) Amazon bundle format: a directory of CSVs per domain."""

from __future__ import annotations

import ast
import html
import csv
from pathlib import Path
from typing import Iterator

from rag_rec.data.cleaning import CleaningReport, RowChecker
from rag_rec.constants import MAX_TIMESTAMP
from rag_rec.data.models import Bundle, Dataset, Interactions, Product, Session
from rag_rec.errors import DataError

REQUIRED_FILES = ("item_titles.csv", "session_item.csv", "bundle_item.csv")


def _rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(row number, row) pairs; the header is row 1. Checks the header names the expected columns."""
    csv.field_size_limit(1 << 24)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise DataError("file is empty (expected a header row)", file=str(path), row=1) from None
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"header {header} lacks column(s) {missing}", file=str(path), row=1,
                                field=missing[0])
            index = {c: header.index(c) for c in columns}
            for raw in reader:
                if not raw or all(not cell.strip() for cell in raw):
                    continue
                yield reader.line_num, {c: (raw[i].strip() if i < len(raw) else "") for c, i in index.items()}
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(path),
                            row=reader.line_num + 1) from None
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", file=str(path), row=reader.line_num) from None


def _parse_categories(text: str) -> tuple[str, ...]:
    """'[[Electronics,Computers & Accessories,...]]' -> the longest path, as a tuple."""
    text = text.strip()
    if not text:
        return ()
    try:
        value = ast.literal_eval(text)
        if not isinstance(value, (list, tuple)):
            raise ValueError("not a list")
        if value and all(isinstance(p, (list, tuple)) for p in value):
            paths = [tuple(str(x) for x in p) for p in value]
        else:
            paths = [tuple(str(x) for x in value)]
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        inner = text.strip("[]")
        paths = [tuple(part.strip() for part in chunk.split(",") if part.strip())
                 for chunk in inner.split("],[")]
    paths = [p for p in paths if p]
    return max(paths, key=len) if paths else ()


def load_amazon_bundles(directory: str | Path, *, strict: bool = True, name: str | None = None) -> Dataset:
    """Load any domain in the Sun et al. layout; products are keyed by ASIN when item_idx_mapping.csv exists."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"not a directory: {root}")
    for required in REQUIRED_FILES:
        if not (root / required).is_file():
            raise DataError(f"missing required file {required}", file=str(root / required))
    report = CleaningReport()

    def checker(fname: str) -> RowChecker:
        return RowChecker(root / fname, report, strict)

    def int_id(chk: RowChecker, number: int, row: dict[str, str], column: str) -> str | None:
        value = row[column]
        if not value.lstrip("-").isdigit():
            chk.reject(number, column, f"expected an integer id, got {value!r}", row)
            return None
        if column == "timestamp" and not 0 <= int(value) <= MAX_TIMESTAMP:
            chk.reject(number, column, f"not a unix time: {value[:30]!r}", row)
            return None
        return str(int(value))

    asin: dict[str, str] = {}
    taken: dict[str, str] = {}  # source ID -> the item that has it: two items never merge into one product
    mapping = root / "item_idx_mapping.csv"
    if mapping.is_file():
        chk = checker(mapping.name)
        for number, row in _rows(mapping, ("item ID", "source ID")):
            iid = int_id(chk, number, row, "item ID")
            if iid is None or not row["source ID"]:
                continue
            if row["source ID"] in taken and taken[row["source ID"]] != iid:
                chk.reject(number, "source ID", f"{row['source ID']!r} is already item {taken[row['source ID']]}",
                           row)
                continue
            asin[iid] = taken[row["source ID"]] = row["source ID"]

    def pid(internal: str) -> str:
        return asin.get(internal, internal)

    titles: dict[str, str] = {}
    chk = checker("item_titles.csv")
    for number, row in _rows(root / "item_titles.csv", ("item ID", "titles")):
        iid = int_id(chk, number, row, "item ID")
        if iid is None:
            continue
        if iid in titles:
            report.count("duplicates_removed", "item_titles.csv")
            continue
        title = html.unescape(row["titles"]).strip()
        if title != row["titles"].strip():
            report.count("outliers", "item_titles.csv:html_entities_decoded")
        titles[iid] = title

    categories: dict[str, tuple[str, ...]] = {}
    if (root / "item_categories.csv").is_file():
        chk = checker("item_categories.csv")
        for number, row in _rows(root / "item_categories.csv", ("item ID", "categories")):
            iid = int_id(chk, number, row, "item ID")
            if iid is None:
                continue
            if iid in categories:
                report.count("duplicates_removed", "item_categories.csv")
                continue
            categories[iid] = _parse_categories(row["categories"])

    products: dict[str, Product] = {}
    for iid, title in titles.items():
        category = categories.get(iid, ())
        if not title:
            title = " > ".join(category[-2:]) if category else f"item {pid(iid)}"
            report.count("missing_filled", "item_titles.csv:titles")
        products[pid(iid)] = Product(id=pid(iid), title=title, category=category, attributes={"item_idx": iid})

    def known(chk: RowChecker, number: int, row: dict[str, str], iid: str | None) -> bool:
        if iid is None:
            return False
        if pid(iid) not in products:
            chk.reject(number, "item ID", f"item {iid} has no row in item_titles.csv", row)
            return False
        return True

    session_user: dict[str, tuple[str, int]] = {}
    if (root / "user_session.csv").is_file():
        chk = checker("user_session.csv")
        for number, row in _rows(root / "user_session.csv", ("user ID", "session ID", "timestamp")):
            uid, sid = int_id(chk, number, row, "user ID"), int_id(chk, number, row, "session ID")
            ts = int_id(chk, number, row, "timestamp")
            if None not in (uid, sid, ts):
                session_user[sid] = (uid, int(ts))

    session_items: dict[str, list[str]] = {}
    chk = checker("session_item.csv")
    for number, row in _rows(root / "session_item.csv", ("session ID", "item ID")):
        sid, iid = int_id(chk, number, row, "session ID"), int_id(chk, number, row, "item ID")
        if sid is None or iid is None:
            continue
        if pid(iid) not in products:  # sessions also hold viewed items that never entered a bundle: no title row
            products[pid(iid)] = Product(id=pid(iid), title=f"item {pid(iid)}", attributes={"item_idx": iid,
                                                                                           "untitled": "1"})
            report.count("missing_filled", "session_item.csv:items_without_title")
        items = session_items.setdefault(sid, [])
        if pid(iid) in items:
            report.count("duplicates_removed", "session_item.csv")
            continue
        items.append(pid(iid))
    sessions = {
        sid: Session(sid, tuple(items), *session_user.get(sid, (None, None))) for sid, items in session_items.items()
    }

    intents: dict[str, str] = {}
    if (root / "bundle_intent.csv").is_file():
        chk = checker("bundle_intent.csv")
        for number, row in _rows(root / "bundle_intent.csv", ("bundle ID", "intent")):
            bid = int_id(chk, number, row, "bundle ID")
            if bid is not None:
                intents[bid] = row["intent"]
    bundle_session: dict[str, str] = {}
    if (root / "session_bundle.csv").is_file():
        chk = checker("session_bundle.csv")
        for number, row in _rows(root / "session_bundle.csv", ("session ID", "bundle ID")):
            sid, bid = int_id(chk, number, row, "session ID"), int_id(chk, number, row, "bundle ID")
            if None not in (sid, bid):
                bundle_session[bid] = sid
    bundle_items: dict[str, list[str]] = {}
    chk = checker("bundle_item.csv")
    for number, row in _rows(root / "bundle_item.csv", ("bundle ID", "item ID")):
        bid, iid = int_id(chk, number, row, "bundle ID"), int_id(chk, number, row, "item ID")
        if bid is None or not known(chk, number, row, iid):
            continue
        items = bundle_items.setdefault(bid, [])
        if pid(iid) in items:
            report.count("duplicates_removed", "bundle_item.csv")
            continue
        items.append(pid(iid))
    bundles = [
        Bundle(bid, tuple(items), intents.get(bid), bundle_session.get(bid))
        for bid, items in sorted(bundle_items.items(), key=lambda kv: int(kv[0]))
    ]
    small = [b for b in bundles if len(b.items) < 2]
    if small:
        report.count("outliers", "bundle_item.csv:bundles_with_fewer_than_2_items", len(small))

    events: list[tuple[str, str, int]] = []
    seen: set[tuple[str, str, int]] = set()
    if (root / "user_item.csv").is_file():
        chk = checker("user_item.csv")
        for number, row in _rows(root / "user_item.csv", ("user ID", "item ID", "timestamp")):
            uid, iid = int_id(chk, number, row, "user ID"), int_id(chk, number, row, "item ID")
            ts = int_id(chk, number, row, "timestamp")
            if uid is None or ts is None or not known(chk, number, row, iid):
                continue
            key = (uid, pid(iid), int(ts))
            if key in seen:
                report.count("duplicates_removed", "user_item.csv")
                continue
            seen.add(key)
            events.append(key)
    import pandas as pd

    frame = pd.DataFrame(events, columns=["user_id", "item_id", "timestamp"])
    frame["event"] = "purchase"
    return Dataset(
        name=name or f"amazon-{root.name}",
        products=products,
        interactions=Interactions(frame),
        sessions=sessions,
        bundles=bundles,
        source=str(root),
        report=report,
    )
