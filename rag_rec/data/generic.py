"""The shop export format: products + events (+ optional bundles) as CSV, JSONL or Parquet.

A directory holding:
- products.{csv,jsonl,parquet}: id, title (required); category (path joined by ' > '), brand, price,
  description, in_stock (true/false); any column named attr_<name> becomes an attribute.
- events.{csv,jsonl,parquet} (optional): user_id, item_id, timestamp (unix seconds or ISO-8601) required;
  event (view|cart|purchase, default purchase), session_id, quantity, price.
- bundles.{csv,jsonl,parquet} (optional): bundle_id, item_id (one row per item), intent, session_id.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from rag_rec.data.cleaning import MAX_PRICE, CleaningReport, RowChecker, parse_price
from rag_rec.constants import MAX_TIMESTAMP
from rag_rec.data.models import Bundle, Dataset, Interactions, Product, Session
from rag_rec.errors import DataError

EVENT_TYPES = {"view", "click", "cart", "purchase", "wishlist", "return"}
MAX_QUANTITY = 1_000.0
_INTEGER = re.compile(r"-?[0-9]+")


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
    if _INTEGER.fullmatch(value):
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


_PLAIN_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"


def _numbers(text: pd.Series, parse) -> tuple[np.ndarray, np.ndarray]:
    """(values, parsed) of non-empty cells: plain decimals are converted a column at a time (float() itself, so
    the values are exact), any other cell by `parse` (a value, or None where it is not a number)."""
    values = np.full(len(text), np.nan)
    parsed = np.zeros(len(text), dtype=bool)
    plain = text.str.fullmatch(_PLAIN_NUMBER).to_numpy(dtype=bool)
    values[plain] = text[plain].astype(float).to_numpy()
    parsed[plain] = True
    for i in np.flatnonzero(~plain & (text != "").to_numpy()).tolist():
        value = parse(text.iat[i])
        if value is not None:
            values[i], parsed[i] = value, True
    return values, parsed


def _float_or_none(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _timestamps(raw: pd.Series) -> np.ndarray:
    """Unix seconds of each cell (see _timestamp), -1 where a cell is no valid time; ISO dates are parsed a column
    at a time, anything pandas' ISO parser refuses cell by cell as before."""
    text = raw.str.strip()
    seconds = np.full(len(text), -1, dtype=np.int64)
    digits = text.str.fullmatch(_INTEGER.pattern).to_numpy(dtype=bool)
    whole = [int(v) for v in text[digits].tolist()]
    seconds[digits] = [s if 0 <= s <= MAX_TIMESTAMP else -1 for s in whole]
    dated = np.flatnonzero(~digits & (text != "").to_numpy())
    if len(dated):
        parsed = pd.to_datetime(text.iloc[dated], format="ISO8601", utc=True, errors="coerce")
        valid = ~parsed.isna().to_numpy()
        micros = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
        whole_s = np.where(micros < 0, -(-micros // 10**6), micros // 10**6)  # int() truncates toward zero
        seconds[dated[valid]] = np.where((whole_s[valid] >= 0) & (whole_s[valid] <= MAX_TIMESTAMP),
                                         whole_s[valid], -1)
        for i in dated[~valid].tolist():
            value = _timestamp(text.iat[i])
            seconds[i] = -1 if value is None else value
    return seconds


def _load_events(path: Path, products: dict[str, Product], report: CleaningReport, strict: bool) -> Interactions:
    """Events checked a column at a time. A bad row is reported with the first check it fails (user, item,
    timestamp, event; duplicates are dropped before the quantity is read), in row order: strict mode raises at the
    first, as a row-by-row pass would."""
    frame = read_table(path)
    _require_columns(frame, path, ("user_id", "item_id", "timestamp"))
    if frame.empty:
        return Interactions(None)
    chk = RowChecker(path, report, strict)
    first = 2 if path.suffix == ".csv" else 1

    def text(column: str) -> pd.Series:
        if column not in frame.columns:
            return pd.Series("", index=frame.index, dtype=object)
        return frame[column].astype(str)

    user, item = text("user_id").str.strip(), text("item_id").str.strip()
    seconds = _timestamps(text("timestamp"))
    event = text("event").str.strip().str.lower().replace("", "purchase")
    session_raw, quantity_raw = text("session_id"), text("quantity")

    no_user = (user == "").to_numpy()
    unknown_item = ~no_user & ~item.isin(list(products)).to_numpy()
    ok = ~no_user & ~unknown_item
    bad_time = ok & (seconds < 0)
    ok &= ~bad_time
    bad_event = ok & ~event.isin(EVENT_TYPES).to_numpy()
    ok &= ~bad_event
    keys = pd.DataFrame({"u": user, "i": item, "t": seconds, "e": event, "s": session_raw, "q": quantity_raw})[ok]
    duplicate = np.zeros(len(frame), dtype=bool)
    duplicate[np.flatnonzero(ok)[keys.duplicated(keep="first").to_numpy()]] = True
    ok &= ~duplicate
    report.count("duplicates_removed", path.name, int(duplicate.sum()))

    quantity_text = quantity_raw.str.strip()
    quantity, parsed = _numbers(quantity_text, _float_or_none)
    given = (quantity_text != "").to_numpy()
    bad_quantity = ok & given & (~parsed | np.isnan(quantity))
    ok &= ~bad_quantity
    quantity = np.where(given, quantity, 1.0)
    outlier = ok & ((quantity <= 0) | (quantity > MAX_QUANTITY))
    report.count("outliers", f"{path.name}:quantity", int(outlier.sum()))
    quantity = np.where(outlier, np.clip(quantity, 1.0, MAX_QUANTITY), quantity)

    for offset in np.flatnonzero(no_user | unknown_item | bad_time | bad_event | bad_quantity).tolist():
        row = frame.iloc[offset].to_dict()
        if no_user[offset]:
            chk.reject(first + offset, "user_id", "empty user id", row)
        elif unknown_item[offset]:
            chk.reject(first + offset, "item_id", f"unknown product {item.iat[offset]!r}", row)
        elif bad_time[offset]:
            chk.reject(first + offset, "timestamp", f"not a unix time or ISO date: {row['timestamp']!r}", row)
        elif bad_event[offset]:
            chk.reject(first + offset, "event",
                       f"unknown event type {event.iat[offset]!r}; expected one of {sorted(EVENT_TYPES)}", row)
        else:
            chk.reject(first + offset, "quantity", f"not a number: {row['quantity']!r}", row)

    price = _prices(text("price"), ok, path, report)
    kept = np.flatnonzero(ok)
    if not len(kept):
        return Interactions(None)
    session = session_raw.str.strip()
    return Interactions(pd.DataFrame({
        "user_id": user.to_numpy(dtype=object)[kept], "item_id": item.to_numpy(dtype=object)[kept],
        "timestamp": seconds[kept], "event": event.to_numpy(dtype=object)[kept],
        "session_id": session.where(session != "", None).to_numpy(dtype=object)[kept], "quantity": quantity[kept],
        "price": price[kept]}))


def _prices(raw: pd.Series, ok: np.ndarray, path: Path, report: CleaningReport) -> np.ndarray:
    """parse_price of each kept row's cell, a column at a time; a rejected price is counted as an outlier."""
    prices = np.full(len(ok), np.nan)
    cleaned = raw.str.replace("$", "", regex=False).str.replace(",", "", regex=False).str.strip()
    values, parsed = _numbers(cleaned, _float_or_none)
    given = (raw != "").to_numpy()
    problem = given & (~parsed | np.isnan(values) | (values < 0) | (values > MAX_PRICE))
    report.count("outliers", f"{path.name}:price", int((ok & problem).sum()))
    good = given & ~problem
    prices[good] = values[good]
    return prices


def _sessions(frame: pd.DataFrame) -> dict[str, Session]:
    """One Session per session id, in order of first appearance: its distinct items in event order, the user and
    time of its first event (one sort and split, not a pandas group per session)."""
    if frame.empty:
        return {}
    codes, ids = pd.factorize(frame["session_id"], sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    first = order[np.concatenate([[0], bounds])]
    users = frame["user_id"].to_numpy(dtype=object)[first].tolist()
    times = frame["timestamp"].to_numpy()[first].tolist()
    items = frame["item_id"].to_numpy(dtype=object)[order].tolist()
    ends = [*bounds.tolist(), len(items)]
    return {str(sid): Session(str(sid), tuple(dict.fromkeys(items[start:end])), str(user), int(time))
            for sid, start, end, user, time in zip(ids, [0, *ends[:-1]], ends, users, times)}
