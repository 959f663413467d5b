"""Typed catalogue, interactions and ground-truth bundles, with loaders for real datasets."""

from rag_rec.data.models import Bundle, Dataset, Interactions, Product, Session

__all__ = ["Bundle", "Dataset", "Interactions", "Product", "Session", "load_dataset"]


def load_dataset(spec: str, **kwargs) -> Dataset:
    """Load by spec: 'amazon:DIR', 'aicl:FILE', 'dunnhumby[:N]', 'generic:DIR', or a path (format sniffed)."""
    from rag_rec.data.registry import load_dataset as _load

    return _load(spec, **kwargs)
