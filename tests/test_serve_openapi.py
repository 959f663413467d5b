"""Property-based: every operation answers generated requests as its OpenAPI document says (schemathesis)."""

from __future__ import annotations

import pytest
from test_serve_fixtures import API_KEY, CatalogueService

from rag_rec.settings import ServeSettings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (extra dev)")
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow


def _schema():
    from rag_rec.serve.app import create_app

    app = create_app(CatalogueService(), ServeSettings(api_keys=[API_KEY], rate_limit_per_minute=100_000))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = _schema()


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_operations_conform_to_their_schema(case):
    case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    ])  # not negative_data_rejection: pydantic's lax mode accepts e.g. "k": "3" and "use_llm": 0 by design
