"""Where and on what a benchmark ran: written at the top of every bench/results JSON."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from rag_rec.machine import code_version, cpu_model, package_versions


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def header() -> dict:
    """The commit (and whether the tree had changes), CPU, platform, package versions, command line and the load
    average when the run started (`finish` adds the one at its end)."""
    return {**code_version(), "machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "packages": package_versions(), "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "load_average_start": load_average()}


def finish(doc: dict) -> dict:
    doc["load_average_end"] = load_average()
    return doc
