"""What this machine's CPU is, from /proc/cpuinfo (Linux; empty elsewhere)."""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


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
