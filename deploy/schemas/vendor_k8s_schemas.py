"""Vendor small, self-contained Kubernetes JSON schemas for the kinds deploy/k8s uses (offline validation).

Source: the `kubernetes-validate` package (strict schemas generated from the Kubernetes OpenAPI spec).
Run from the repo root after `pip install kubernetes-validate`:  python deploy/schemas/vendor_k8s_schemas.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

VERSION = "v1.32.0-local-strict"
KINDS = (
    "namespace-v1", "configmap-v1", "secret-v1", "service-v1", "persistentvolumeclaim-v1",
    "deployment-apps-v1", "statefulset-apps-v1", "job-batch-v1",
    "horizontalpodautoscaler-autoscaling-v2", "poddisruptionbudget-policy-v1",
)
PREFIX = "/api/_definitions.json#/$defs/"
LOCAL = "#/$defs/"
OUT = Path(__file__).resolve().parent / "k8s"


def _refs(node, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        for prefix in (PREFIX, LOCAL):
            if isinstance(ref, str) and ref.startswith(prefix):
                found.add(ref[len(prefix):])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _rewrite(node):
    """Point refs at the local $defs and drop descriptions (they are most of the size)."""
    if isinstance(node, dict):
        return {k: ("#/$defs/" + v[len(PREFIX):] if k == "$ref" and isinstance(v, str) and v.startswith(PREFIX)
                    else _rewrite(v)) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def main() -> int:
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / VERSION
    definitions = json.loads((root / "_definitions.json").read_text())["$defs"]
    OUT.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        schema = json.loads((root / f"{kind}.json").read_text())
        needed: set[str] = set()
        _refs(schema, needed)
        pending = list(needed)
        while pending:
            extra: set[str] = set()
            _refs(definitions[pending.pop()], extra)
            for name in extra - needed:
                needed.add(name)
                pending.append(name)
        schema = _rewrite(schema)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema.pop("$id", None)
        schema["$defs"] = {name: _rewrite(definitions[name]) for name in sorted(needed)}
        (OUT / f"{kind}.json").write_text(json.dumps(schema, indent=None, separators=(",", ":"), sort_keys=True))
        print(f"{kind}: {len(needed)} definitions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
