"""The shop export format: products + events (+ optional bundles) as CSV, JSONL or Parquet.

A directory holding:
- products.{csv,jsonl,parquet}: id, title (required); category (path joined by ' > '), brand, price,
  description, in_stock (true/false); any column named attr_<name> becomes an attribute.
- events.{csv,jsonl,parquet} (optional): user_id, item_id, timestamp (unix seconds or ISO-8601) required;
  event (view|cart|purchase, default purchase), session_id, quantity, price.
- bundles.{csv,jsonl,parquet} (optional): bundle_id, item_id (one row per item), intent, session_id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rag_rec.data.cleaning import CleaningReport, RowChecker, parse_price
from rag_rec.constants import MAX_TIMESTAMP
from rag_rec.data.models import Bundle, Dataset, Interactions, Product, Session
from rag_rec.errors import DataError

EVENT_TYPES = {"view", "click", "cart", "purchase", "wishlist", "return"}
MAX_QUANTITY = 1_000.0


def _find(root: Path, stem: str, required: bool) -> Path | None:
    for ext in ("csv", "jsonl", "parquet"):
        if (root / f"{stem}.{ext}").is_file():
            return root / f"{stem}.{ext}"
    if required:
        raise DataError(f"missing {stem}.csv / {stem}.jsonl / {stem}.parquet", file=str(root / stem))
    return None


def read_table(path: Path) -> pd.DataFrame:
    """Read CSV/JSONL/Parquet as strings; malformed files raise DataError naming the file (and line)."""
    try:
        if path.suffix == ".csv":
            return _read_csv(path)
        if path.suffix == ".jsonl":
            rows = []
            import json

            with open(path, encoding="utf-8") as fh:
                for number, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise DataError(f"invalid JSON: {exc.msg}", file=str(path), row=number) from None
                        if not isinstance(obj, dict):
                            raise DataError("each line must be a JSON object", file=str(path), row=number)
                        rows.append({k: _cell(v) for k, v in obj.items()})
            return pd.DataFrame(rows).fillna("")
        frame = pd.read_parquet(path)
        return frame.astype(object).apply(lambda column: column.map(_cell))
    except DataError:
        raise
    except Exception as exc:  # parser errors from pandas/pyarrow
        raise DataError(f"cannot parse: {exc}", file=str(path)) from None


def _cell(value) -> str:
    """A JSON or Parquet value as the text a CSV cell would hold: a list is a category path ("A > B"), a whole
    float is an integer (an id column with a null turns into floats), a null is empty."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return " > ".join(_cell(v) for v in value if _cell(v))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV as strings; a row with more or fewer fields than the header is an error naming it (pandas would
    shift every column of a catalogue whose first row has one field too many)."""
    import csv

    csv.field_size_limit(1 << 24)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return pd.DataFrame()
            header = [h.strip() for h in header]
            rows = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{len(row)} fields where the header has {len(header)} (an unquoted comma?)",
                                    file=str(path), row=reader.line_num)
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(path)) from None
    except csv.Error as exc:
        raise DataError(f"malformed CSV: {exc}", file=str(path)) from None
    return pd.DataFrame(rows, columns=header, dtype=str)


def _require_columns(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; has {list(frame.columns)}", file=str(path), row=1,
                        field=missing[0])


def _timestamp(value: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    if value.lstrip("-").isdigit():
        seconds = int(value)
    else:
        try:
            seconds = int(pd.Timestamp(value).timestamp())
        except (ValueError, TypeError, OverflowError):
            return None
    return seconds if 0 <= seconds <= MAX_TIMESTAMP else None


def load_generic(directory: str | Path, *, strict: bool = True, name: str | None = None,
                 report: CleaningReport | None = None) -> Dataset:
    """Load a shop export; row numbers in errors are 1-based data rows as a person counts them (header = 1)."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"not a directory: {root}")
    report = report or CleaningReport()
    products_path = _find(root, "products", required=True)
    frame = read_table(products_path)
    _require_columns(frame, products_path, ("id", "title"))
    chk = RowChecker(products_path, report, strict)
    first_row = 2 if products_path.suffix == ".csv" else 1
    products: dict[str, Product] = {}
    for offset, row in enumerate(frame.to_dict("records")):
        number = first_row + offset
        pid = str(row.get("id", "")).strip()
        if not pid:
            chk.reject(number, "id", "empty product id", row)
            continue
        title = str(row.get("title", "")).strip()
        category = tuple(p.strip() for p in str(row.get("category", "")).split(">") if p.strip())
        if not title:
            if not category:
                chk.reject(number, "title", "empty title and no category to describe the product", row)
                continue
            title = " > ".join(category[-2:])
            report.count("missing_filled", f"{products_path.name}:title")
        price, problem = parse_price(row.get("price"))
        if problem:
            report.count("outliers", f"{products_path.name}:price")
            if strict and "not a number" in problem:
                chk.reject(number, "price", problem, row)
        stock_raw = str(row.get("in_stock", "true")).strip().lower()
        if stock_raw not in {"", "true", "false", "1", "0", "yes", "no"}:
            chk.reject(number, "in_stock", f"expected true/false, got {stock_raw!r}", row)
            continue
        attributes = {k[5:]: str(v) for k, v in row.items() if k.startswith("attr_") and str(v).strip()}
        product = Product(pid, title, category, str(row.get("brand", "")).strip() or None, price,
                          str(row.get("description", "")).strip() or None, attributes,
                          stock_raw not in {"false", "0", "no"})
        if pid in products:
            report.count("duplicates_removed", products_path.name)
        products[pid] = product

    interactions = Interactions()
    sessions: dict[str, Session] = {}
    events_path = _find(root, "events", required=False)
    if events_path is not None:
        interactions = _load_events(events_path, products, report, strict)
        frame = interactions.frame  # a return is no co-purchase
        with_session = frame[frame["event"].fillna("") != "return"].dropna(subset=["session_id"])
        sessions = _sessions(with_session)

    bundles: list[Bundle] = []
    bundles_path = _find(root, "bundles", required=False)
    if bundles_path is not None:
        frame = read_table(bundles_path)
        _require_columns(frame, bundles_path, ("bundle_id", "item_id"))
        chk = RowChecker(bundles_path, report, strict)
        first = 2 if bundles_path.suffix == ".csv" else 1
        grouped: dict[str, dict] = {}
        for offset, row in enumerate(frame.to_dict("records")):
            bundle_id, item = str(row["bundle_id"]).strip(), str(row["item_id"]).strip()
            if not bundle_id:
                chk.reject(first + offset, "bundle_id", "empty bundle id", row)
                continue
            if item not in products:
                chk.reject(first + offset, "item_id", f"unknown product {item!r}", row)
                continue
            g = grouped.setdefault(bundle_id, {"items": [], "intent": str(row.get("intent") or "").strip() or None,
                                               "session": str(row.get("session_id") or "").strip() or None})
            g["items"].append(item)
        bundles = [Bundle(bid, tuple(dict.fromkeys(g["items"])), g["intent"], g["session"])
                   for bid, g in grouped.items()]
    return Dataset(name or root.name, products, interactions, sessions, bundles, source=str(root), report=report)


def _load_events(path: Path, products: dict[str, Product], report: CleaningReport, strict: bool) -> Interactions:
    frame = read_table(path)
    _require_columns(frame, path, ("user_id", "item_id", "timestamp"))
    chk = RowChecker(path, report, strict)
    first = 2 if path.suffix == ".csv" else 1
    rows = []
    seen: set[tuple] = set()
    for offset, row in enumerate(frame.to_dict("records")):
        number = first + offset
        user, item = str(row["user_id"]).strip(), str(row["item_id"]).strip()
        if not user:
            chk.reject(number, "user_id", "empty user id", row)
            continue
        if item not in products:
            chk.reject(number, "item_id", f"unknown product {item!r}", row)
            continue
        ts = _timestamp(str(row["timestamp"]))
        if ts is None:
            chk.reject(number, "timestamp", f"not a unix time or ISO date: {row['timestamp']!r}", row)
            continue
        event = (str(row.get("event", "")).strip().lower() or "purchase")
        if event not in EVENT_TYPES:
            chk.reject(number, "event", f"unknown event type {event!r}; expected one of {sorted(EVENT_TYPES)}", row)
            continue
        key = (user, item, ts, event, str(row.get("session_id", "")), str(row.get("quantity", "")))
        if key in seen:
            report.count("duplicates_removed", path.name)
            continue
        seen.add(key)
        quantity = 1.0
        if str(row.get("quantity", "")).strip():
            try:
                quantity = float(row["quantity"])
                if quantity != quantity:
                    raise ValueError("NaN")
            except ValueError:
                chk.reject(number, "quantity", f"not a number: {row['quantity']!r}", row)
                continue
            if quantity <= 0 or quantity > MAX_QUANTITY:
                report.count("outliers", f"{path.name}:quantity")
                quantity = min(max(quantity, 1.0), MAX_QUANTITY)
        price, problem = parse_price(row.get("price"))
        if problem:
            report.count("outliers", f"{path.name}:price")
        rows.append({"user_id": user, "item_id": item, "timestamp": ts, "event": event,
                     "session_id": str(row.get("session_id", "")).strip() or None, "quantity": quantity,
                     "price": price})
    return Interactions(pd.DataFrame(rows) if rows else None)


def _sessions(frame: pd.DataFrame) -> dict[str, Session]:
    """One Session per session id, in order of first appearance: its distinct items in event order, the user and
    time of its first event (one sort and split, not a pandas group per session)."""
    if frame.empty:
        return {}
    codes, ids = pd.factorize(frame["session_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    first = order[np.concatenate([[0], bounds])]
    users, times = frame["user_id"].to_numpy(dtype=object), frame["timestamp"].to_numpy()
    items = np.split(frame["item_id"].to_numpy(dtype=object)[order], bounds)
    return {str(sid): Session(str(sid), tuple(dict.fromkeys(group)), str(users[f]), int(times[f]))
            for sid, group, f in zip(ids, items, first.tolist())}
