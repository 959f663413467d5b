"""Pydantic models that only the HTTP layer exposes: error bodies, health, chat stream events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rag_rec.schemas import Strict


class FieldIssue(Strict):
    field: str = Field(description="Dotted location of the bad value, e.g. 'body.k' or 'body.messages.0.role'")
    message: str
    type: str


class ErrorOut(Strict):
    """Every 4xx/5xx body: a stable machine-readable code plus a human-readable detail."""

    error: str = Field(description="Stable error code, e.g. 'unauthorized', 'validation_error', 'unknown_product'")
    detail: Any = Field(default=None, description="What went wrong: a sentence, or a list of FieldIssue for 422")
    request_id: str | None = None


class HealthOut(Strict):
    status: Literal["ok", "unavailable"]
    service: dict[str, Any] = Field(default_factory=dict, description="What the bundle service reports about itself")


class ChatTextEvent(Strict):
    text: str


class ChatClarifyEvent(Strict):
    question: str
    missing: Literal["need", "budget"] = "need"


class ChatDoneEvent(Strict):
    request_id: str
    latency_ms: float
