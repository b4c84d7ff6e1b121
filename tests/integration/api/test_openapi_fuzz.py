"""A property-based run against the API's own OpenAPI spec (schemathesis): whatever the
inputs, no server error, and every answer conforms to the spec."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.tokens import create_token
from tests.integration.api.conftest import SITE_A, ApiRun


@pytest.fixture(scope="module")
def fuzz_tokens(api_run: ApiRun) -> dict[str, str]:
    conninfo = api_run.settings.postgres.conninfo()
    return {
        "admin": create_token(conninfo, "fuzz-admin", "admin"),
        "staff": create_token(conninfo, "fuzz-staff", "staff", (SITE_A,)),
    }


@pytest.fixture(scope="module")
def api_schema(api_run: ApiRun) -> Any:
    return schemathesis.openapi.from_url(f"{api_run.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
# Inputs valid for the schema may still be refused with a documented 400: a cursor this API
# never handed out, a range with from after to. Every other check applies, server errors first.
EXCLUDED = [schemathesis.checks.positive_data_acceptance]
TOKEN: dict[str, str] = {}  # the token the running test acts with


@schemathesis.auth(refresh_interval=None, retry_on=[])
class BearerToken:
    """Through schemathesis' auth, so that its own cases without a token stay without one
    (and must be refused)."""

    def get(self, case: Any, context: Any) -> str:
        return TOKEN["current"]

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(autouse=True)
def services(require) -> None:  # type: ignore[no-untyped-def]
    require("postgres", "kafka", "elasticsearch", "redis")


@pytest.fixture
def as_admin(fuzz_tokens: dict[str, str]) -> None:
    TOKEN["current"] = fuzz_tokens["admin"]


@pytest.fixture
def as_staff(fuzz_tokens: dict[str, str]) -> None:
    TOKEN["current"] = fuzz_tokens["staff"]


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_honours_its_spec_for_an_admin(case: Any, as_admin: None) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_honours_its_spec_for_staff(case: Any, as_staff: None) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED)
