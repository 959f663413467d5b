"""HTTP serving (extra `serve`): `create_app(service, settings)` and `serve_main(settings, service)`."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve_main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rag_rec.errors import require

        for module in ("fastapi", "uvicorn", "prometheus_client"):
            require(module, "serve")
        from rag_rec.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'rag_rec.serve' has no attribute {name!r}")
