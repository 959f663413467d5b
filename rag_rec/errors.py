"""Errors that name what went wrong and where."""

from __future__ import annotations


class RagRecError(Exception):
    """Base class for every error rag_rec raises on purpose."""


class DataError(RagRecError):
    """A bad input row: names the file, the row (1-based, header = row 1) and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field = file, row, field
        where = ", ".join(
            part for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"field '{field}'" if field else "",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class UsageError(RagRecError, ValueError):
    """A command or call asked for something that does not exist (an unknown task, recommender or file)."""


class MissingExtraError(RagRecError, ImportError):
    """A heavy optional dependency is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(f"{package} is not installed; install it with: pip install 'rag_rec[{extra}]'")
        self.package, self.extra = package, extra


class IndexStoreError(RagRecError):
    """The vector index is unusable (corrupt, locked, wrong dimension)."""


class IncompatibleIndexError(IndexStoreError):
    """The collection exists with other vectors (names, dimensions or distances) than the product needs."""


class StorageError(RagRecError):
    """Durable storage (the ingest journal) refused a write: nothing of that write was stored or applied."""


class ModelError(RagRecError):
    """A model file is missing, has a wrong checksum or cannot be converted."""


class LLMOutputError(RagRecError):
    """The LLM produced output that is not valid against the schema or the candidates."""


def require(module: str, extra: str):
    """Import a heavy optional module lazily, naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra) from exc
