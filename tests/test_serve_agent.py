"""The customer-service agent tool: plain function and LangChain StructuredTool."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from rag_rec.serve.agent_tool import (
    TOOL_NAME,
    RecommendForCustomerArgs,
    make_recommend_tool,
    recommend_for_customer,
)

pytest_plugins = ("test_serve_fixtures",)


def test_recommend_for_customer_returns_grounded_json(recording_service):
    result = recommend_for_customer(recording_service, "cust-42", "just bought a camcorder for a trip", budget=80, k=2)
    json.dumps(result)  # JSON-ready
    sent = recording_service.requests[-1]
    assert (sent.user_id, sent.need, sent.budget, sent.k) == ("cust-42", "just bought a camcorder for a trip", 80, 2)
    assert result["customer_id"] == "cust-42" and 1 <= len(result["bundles"]) <= 2
    for bundle in result["bundles"]:
        assert bundle["reason"] and bundle["title"] in result["summary"]
        for item in bundle["items"]:
            assert recording_service.product(item["id"]).title == item["title"]
    assert result["produced_by"] in {"llm", "llm_repaired", "fallback", "heuristic"}


def test_summary_of_an_empty_answer_says_so():
    from rag_rec.schemas import BundleResponse
    from rag_rec.serve.agent_tool import _summary

    empty = BundleResponse(bundles=[], produced_by="heuristic", notes=["unknown user 'x': content-based cold start"])
    assert _summary(empty) == "No bundle found for this situation. unknown user 'x': content-based cold start"


@pytest.mark.parametrize("kwargs", [{"customer_id": ""}, {"situation": ""}, {"situation": "   "}, {"budget": -3},
                                    {"k": 0}, {"k": 11}])
def test_recommend_for_customer_validates_arguments(recording_service, kwargs):
    args = {"customer_id": "c", "situation": "usb storage", **kwargs}
    with pytest.raises(ValidationError):
        recommend_for_customer(recording_service, **args)
    assert recording_service.requests == []


def test_structured_tool_schema_and_invocation(recording_service):
    tool = make_recommend_tool(recording_service)
    assert tool.name == TOOL_NAME and "bundles" in tool.description
    assert tool.args_schema is RecommendForCustomerArgs
    schema = tool.tool_call_schema.model_json_schema()
    assert set(schema["required"]) == {"customer_id", "situation"}
    assert set(schema["properties"]) == {"customer_id", "situation", "budget", "k"}
    result = tool.invoke({"customer_id": "cust-7", "situation": "headphones for the gym", "k": 1})
    assert len(result["bundles"]) == 1 and recording_service.requests[-1].user_id == "cust-7"
    asked = len(recording_service.requests)
    # a model's bad call gets a message naming the argument to fix, not an exception that ends the agent's turn
    wrong_k = tool.invoke({"customer_id": "cust-7", "situation": "x", "k": 0})
    assert wrong_k.startswith("Invalid arguments") and "k:" in wrong_k
    assert "coupon" in tool.invoke({"customer_id": "cust-7", "situation": "x", "coupon": "FREE"})
    assert "customer_id" in tool.invoke({"customer_id": 12345, "situation": "x"})
    assert len(recording_service.requests) == asked


def test_tool_call_from_a_model_message(recording_service):
    """A tool call as an LLM emits it (ToolCall dict) yields a ToolMessage with the JSON result."""
    tool = make_recommend_tool(recording_service)
    call = {"type": "tool_call", "id": "call-1", "name": TOOL_NAME,
            "args": {"customer_id": "cust-9", "situation": "car radio install", "budget": 60}}
    message = tool.invoke(call)
    assert message.tool_call_id == "call-1"
    content = json.loads(message.content) if message.content.startswith("{") else message.content
    text = json.dumps(content).lower()
    assert recording_service.requests[-1].need == "car radio install"
    assert any(word in text for word in ("car", "radio", "vehicle", "stereo", "automotive"))
