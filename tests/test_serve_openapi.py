"""Property-based: every operation answers generated requests as its OpenAPI document says (schemathesis)."""

from __future__ import annotations

import pytest
import tempfile

from test_serve_fixtures import API_KEY

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


class LazyPipeline:
    """The real pipeline, built on first use (schemathesis needs the app at import time)."""

    _pipeline = None

    def __getattr__(self, name):
        if LazyPipeline._pipeline is None:
            from rag_rec.pipeline import BundlePipeline
            from rag_rec.settings import Settings

            LazyPipeline._pipeline = BundlePipeline.from_settings(
                Settings(index={"path": tempfile.mkdtemp(prefix="rag-rec-fuzz-")}, llm={"backend": "none"}))
        return getattr(LazyPipeline._pipeline, name)


def _schema():
    from rag_rec.serve.app import create_app

    app = create_app(LazyPipeline(), ServeSettings(api_keys=[API_KEY], rate_limit_per_minute=100_000))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = _schema()


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_operations_conform_to_their_schema(case):
    case.call_and_validate(headers={"X-API-Key": API_KEY}, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    ])  # negative_data_rejection is left out: schema-invalid bodies over the size limit rightly get 413
