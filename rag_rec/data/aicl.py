"""Loader for the AICL (SIGIR 2024) session split: one JSON object per domain, keyed by ASIN."""

from __future__ import annotations

import html
import json
from pathlib import Path

from rag_rec.data.cleaning import CleaningReport, RowChecker
from rag_rec.data.models import Bundle, Dataset, Product, Session
from rag_rec.errors import DataError

REQUIRED_KEYS = ("test_sessions", "train_sessions", "session_items", "session_bundles", "item_titles")
SHAPES = {"test_sessions": list, "train_sessions": list, "session_items": dict, "session_bundles": dict,
          "item_titles": dict, "neighbour_sessions": dict}


def load_aicl_split(path: str | Path, *, strict: bool = True, catalog: Dataset | None = None,
                    name: str | None = None) -> Dataset:
    """Load any AICL-format split. `catalog` (e.g. the Amazon domain) adds category paths by ASIN."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"no such file: {file}")
    try:
        doc = json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", file=str(file), row=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(file)) from None
    if not isinstance(doc, dict):
        raise DataError("top level must be a JSON object", file=str(file))
    for key in REQUIRED_KEYS:
        if key not in doc:
            raise DataError(f"missing key '{key}'", file=str(file), field=key)
    for key, kind in SHAPES.items():
        if key in doc and not isinstance(doc[key], kind):
            raise DataError(f"'{key}' must be a JSON {'object' if kind is dict else 'list'}, got "
                            f"{type(doc[key]).__name__}", file=str(file), field=key)
    report = CleaningReport()
    chk = RowChecker(file, report, strict)

    products: dict[str, Product] = {}
    for number, (asin, title) in enumerate(doc["item_titles"].items(), start=1):
        if not isinstance(title, str):
            chk.reject(number, f"item_titles.{asin}", f"title must be a string, got {type(title).__name__}", title)
            continue
        base = catalog.products.get(asin) if catalog else None
        if not title.strip():
            report.count("missing_filled", "item_titles")
            title = base.title if base else f"item {asin}"
        products[asin] = Product(id=asin, title=html.unescape(title).strip(), category=base.category if base else ())

    sessions: dict[str, Session] = {}
    bundles: list[Bundle] = []
    for number, (sid, items) in enumerate(doc["session_items"].items(), start=1):
        field = f"session_items.{sid}"
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            chk.reject(number, field, "expected a non-empty list of ASINs (strings)", items)
            continue
        unknown = [i for i in items if i not in products]
        if unknown:
            chk.reject(number, field, f"items {unknown[:3]} have no title in item_titles", items)
            continue
        unique = tuple(dict.fromkeys(items))
        report.count("duplicates_removed", "session_items", len(items) - len(unique))
        sessions[str(sid)] = Session(str(sid), unique)
        listed = doc["session_bundles"].get(sid, [])
        if not isinstance(listed, list):
            chk.reject(number, f"session_bundles.{sid}", "expected a list of bundles", listed)
            listed = []
        for j, b in enumerate(listed):
            bfield = f"session_bundles.{sid}[{j}]"
            if (not isinstance(b, dict) or not isinstance(b.get("items"), list)
                    or not all(isinstance(i, str) for i in b["items"])
                    or not isinstance(b.get("intent") or "", str)):
                chk.reject(number, bfield, "expected {intent: text, items: [ASIN, ...]}", b)
                continue
            outside = [i for i in b["items"] if i not in unique]
            if outside:
                chk.reject(number, bfield + ".items", f"items {outside[:3]} are not in the session", b)
                continue
            if len(set(b["items"])) < 2:
                chk.reject(number, bfield + ".items", "a bundle needs at least 2 distinct products", b)
                continue
            bundles.append(Bundle(f"{sid}-{j}", tuple(dict.fromkeys(b["items"])), (b.get("intent") or "").strip() or None,
                                  str(sid)))
    missing_splits = [s for key in ("test_sessions", "train_sessions") for s in doc[key] if str(s) not in sessions]
    if missing_splits:
        chk.reject(0, "test_sessions/train_sessions", f"{len(missing_splits)} split ids have no session_items, "
                   f"e.g. {missing_splits[:3]}", missing_splits[:10])
    test = list(dict.fromkeys(str(s) for s in doc["test_sessions"] if str(s) in sessions))
    overlap = set(test) & {str(s) for s in doc["train_sessions"]}
    if overlap:  # a test session among the demonstrations would show the model its own answer
        chk.reject(0, "train_sessions", f"{len(overlap)} sessions are also test sessions, e.g. "
                   f"{sorted(overlap)[:3]}; they are left out of training", sorted(overlap)[:10])
    splits = {
        "test": test,
        "train": [s for s in dict.fromkeys(str(s) for s in doc["train_sessions"] if str(s) in sessions)
                  if s not in overlap],
    }
    neighbours = {}
    for k, v in doc.get("neighbour_sessions", {}).items():
        if isinstance(v, list):
            neighbours[str(k)] = [str(x) for x in v]
        else:
            chk.reject(0, f"neighbour_sessions.{k}", "expected a list of session ids", v)
    return Dataset(
        name=name or f"aicl-{file.stem}",
        products=products,
        sessions=sessions,
        bundles=bundles,
        splits=splits,
        neighbours=neighbours,
        source=str(file),
        report=report,
    )
