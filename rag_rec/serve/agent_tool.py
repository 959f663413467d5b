"""Bundle recommendations as a tool for customer-service agents: a plain function and a LangChain tool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError, field_validator

from rag_rec.errors import require
from rag_rec.schemas import BundleRequest, BundleResponse, Strict
from rag_rec.service import BundleService

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

TOOL_NAME = "recommend_bundles_for_customer"
TOOL_DESCRIPTION = (
    "Recommend complementary product bundles for a known customer in a given situation, e.g. "
    "'just bought a DSLR camera and is going travelling'. Returns bundles with product ids, titles, prices "
    "and a reason for each bundle. Only mention products this tool returns."
)


class RecommendForCustomerArgs(Strict):
    customer_id: str = Field(min_length=1, max_length=128, description="The customer's id in the shop")
    situation: str = Field(min_length=1, max_length=1000,
                           description="What the customer needs or is doing, in plain words")
    budget: float | None = Field(default=None, gt=0, description="Maximum total price of one bundle, in dollars")
    k: int = Field(default=3, ge=1, le=10, description="How many bundles to return")

    @field_validator("customer_id", "situation")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


def argument_problems(error: ValidationError) -> str:
    """A tool-call validation error as one line a model can act on (it calls again with fixed arguments)."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in error.errors())
    return f"Invalid arguments, nothing was looked up. Fix and call again: {problems}"


def _summary(response: BundleResponse) -> str:
    if not response.bundles:
        return "No bundle found for this situation." + "".join(f" {note}" for note in response.notes)
    lines = []
    for i, bundle in enumerate(response.bundles, start=1):
        items = "; ".join(item.title for item in bundle.items)
        price = f" (${bundle.total_price:,.2f})" if bundle.total_price is not None else ""
        lines.append(f"{i}. {bundle.title}{price}: {items}. Why: {bundle.reason}")
    return "\n".join(lines)


def recommend_for_customer(service: BundleService, customer_id: str, situation: str,
                           budget: float | None = None, k: int = 3) -> dict[str, Any]:
    """Bundles for a customer's situation as a JSON-ready dict with a text `summary` an agent can quote."""
    args = RecommendForCustomerArgs(customer_id=customer_id, situation=situation, budget=budget, k=k)
    response = service.recommend(BundleRequest(user_id=args.customer_id, need=args.situation,
                                               budget=args.budget, k=args.k))
    return {
        "customer_id": args.customer_id,
        "situation": args.situation,
        "budget": args.budget,
        "produced_by": response.produced_by,
        "bundles": [
            {
                "title": bundle.title,
                "reason": bundle.reason,
                "total_price": bundle.total_price,
                "items": [{"id": item.id, "title": item.title, "category": item.category[-1] if item.category else None,
                           "price": item.price} for item in bundle.items],
            }
            for bundle in response.bundles
        ],
        "notes": list(response.notes),
        "summary": _summary(response),
    }


def make_recommend_tool(service: BundleService) -> StructuredTool:
    """A LangChain StructuredTool over `recommend_for_customer` (needs langchain-core, extra `serve`)."""
    tools = require("langchain_core.tools", "serve")

    def run(customer_id: str, situation: str, budget: float | None = None, k: int = 3) -> dict[str, Any]:
        return recommend_for_customer(service, customer_id, situation, budget=budget, k=k)

    return tools.StructuredTool.from_function(
        func=run,
        name=TOOL_NAME,
        description=TOOL_DESCRIPTION,
        args_schema=RecommendForCustomerArgs,
        infer_schema=False,
        handle_validation_error=argument_problems,
    )
