"""Row validation and the cleaning report: nothing is dropped without being counted and explained."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag_rec.errors import DataError


@dataclass(frozen=True)
class RowIssue:
    file: str
    row: int
    field: str
    message: str
    raw: str = ""


@dataclass
class CleaningReport:
    """What cleaning changed, per file: duplicates removed, values filled, outliers fixed, rows quarantined."""

    duplicates_removed: dict[str, int] = field(default_factory=dict)
    missing_filled: dict[str, int] = field(default_factory=dict)
    outliers: dict[str, int] = field(default_factory=dict)
    quarantined: list[RowIssue] = field(default_factory=list)

    def count(self, bucket: str, key: str, n: int = 1) -> None:
        if n:
            target = getattr(self, bucket)
            target[key] = target.get(key, 0) + n

    @property
    def changed(self) -> bool:
        return bool(self.duplicates_removed or self.missing_filled or self.outliers or self.quarantined)

    def to_dict(self) -> dict:
        return {
            "duplicates_removed": self.duplicates_removed,
            "missing_filled": self.missing_filled,
            "outliers": self.outliers,
            "quarantined": [asdict(q) for q in self.quarantined],
        }

    def summary_lines(self) -> list[str]:
        lines = [f"duplicates removed: {k} = {v}" for k, v in sorted(self.duplicates_removed.items())]
        lines += [f"missing filled: {k} = {v}" for k, v in sorted(self.missing_filled.items())]
        lines += [f"outliers: {k} = {v}" for k, v in sorted(self.outliers.items())]
        if self.quarantined:
            lines.append(f"quarantined rows: {len(self.quarantined)}")
        return lines or ["no changes"]

    def write(self, directory: str | Path) -> Path:
        """Write cleaning_report.json and quarantine.csv (every rejected row with file, row, field, reason)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cleaning_report.json").write_text(json.dumps(self.to_dict(), indent=2))
        with open(out / "quarantine.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "row", "field", "message", "raw"])
            for q in self.quarantined:
                writer.writerow([q.file, q.row, q.field, q.message, q.raw])
        return out / "quarantine.csv"


class RowChecker:
    """Raises DataError in strict mode; records the row in the report's quarantine in lenient mode."""

    def __init__(self, file: str | Path, report: CleaningReport, strict: bool = True):
        self.file, self.report, self.strict = str(file), report, strict

    def reject(self, row: int, field_name: str, message: str, raw: object = "") -> None:
        if self.strict:
            raise DataError(message, file=self.file, row=row, field=field_name)
        self.report.quarantined.append(RowIssue(self.file, row, field_name, message, str(raw)[:500]))


MAX_PRICE = 100_000.0


def parse_price(value: object, *, max_price: float = MAX_PRICE) -> tuple[float | None, str | None]:
    """A price or None; returns (value, problem) where problem names why the value was rejected."""
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None, None
    try:
        price = float(str(value).replace("$", "").replace(",", "").strip())
    except ValueError:
        return None, f"price {value!r} is not a number"
    if price != price or price < 0:
        return None, f"price {value!r} is negative or NaN"
    if price > max_price:
        return None, f"price {price} is above the plausible maximum {max_price}"
    return price, None
