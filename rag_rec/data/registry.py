"""Dataset specs: 'amazon:DIR', 'aicl:FILE[@AMAZON_DIR]', 'dunnhumby[:HOUSEHOLDS]', 'generic:DIR', or a bare path."""

from __future__ import annotations

from pathlib import Path

from rag_rec.data.models import Dataset
from rag_rec.errors import DataError


def load_dataset(spec: str, *, strict: bool = True) -> Dataset:
    kind, _, arg = spec.partition(":")
    if kind == "dunnhumby":
        from rag_rec.data.dunnhumby import load_dunnhumby

        if arg and not arg.isdigit():
            raise DataError(f"'dunnhumby:{arg}': the part after the colon is a number of households")
        return load_dunnhumby(households=int(arg) if arg else None)
    if kind == "amazon":
        from rag_rec.data.amazon import load_amazon_bundles

        return load_amazon_bundles(arg, strict=strict)
    if kind == "aicl":
        from rag_rec.data.aicl import load_aicl_split

        path, _, catalog_dir = arg.partition("@")
        catalog = None
        if catalog_dir:
            from rag_rec.data.amazon import load_amazon_bundles

            catalog = load_amazon_bundles(catalog_dir, strict=strict)
        return load_aicl_split(path, strict=strict, catalog=catalog)
    if kind == "generic":
        from rag_rec.data.generic import load_generic

        return load_generic(arg, strict=strict)
    return load_dataset(sniff(Path(spec)), strict=strict)


def sniff(path: Path) -> str:
    """Turn a bare path into a spec by looking at what it holds."""
    if path.is_file() and path.suffix == ".json":
        return f"aicl:{path}"
    if path.is_dir():
        if (path / "bundle_item.csv").is_file():
            return f"amazon:{path}"
        if any((path / f"products.{ext}").is_file() for ext in ("csv", "jsonl", "parquet")):
            return f"generic:{path}"
    raise DataError(f"cannot tell the format of {path}: expected an AICL .json, a directory with bundle_item.csv "
                    "(Sun et al.) or products.csv/jsonl/parquet (shop export), or 'dunnhumby'")
