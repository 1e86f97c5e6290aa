"""The services' OpenAPI documents (docs/openapi/<service>.json) against the code.

Each must be exactly what `deploy.contract_docs` makes from the service's FastAPI app
today (the document the service serves at `/docs/openapi.json`), valid OpenAPI 3.1
(`openapi-spec-validator`), and complete: every route of the app, its bearer security
and its error answers in the one JSON shape the app gives them. No I/O but reading files.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from openapi_spec_validator import OpenAPIV31SpecValidator

from deploy import contract_docs as docs
from deploy.system import TOPOLOGIES, service_http_app
from shared.settings import PROJECT_ROOT

ROOT = PROJECT_ROOT
SERVICES = list(TOPOLOGIES)
REGENERATE = "run `make docs` (python -m deploy.contract_docs) and commit what it writes"
PROBLEM = {"$ref": "#/components/schemas/Problem"}
UNSECURED = {"/health/live", "/health/ready", "/metrics"}  # for probes and Prometheus
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}

Json = dict[str, Any]


def committed(service: str) -> Json:
    document: Json = json.loads((ROOT / docs.openapi_path(service)).read_text(encoding="utf-8"))
    return document


def operations(document: Json) -> list[tuple[str, str, Json]]:
    return [(path, method, operation)
            for path, item in document["paths"].items()
            for method, operation in item.items() if method in METHODS]


def spec_errors(document: Json) -> list[str]:
    return [f"{'/'.join(map(str, error.path))}: {error.message}"
            for error in OpenAPIV31SpecValidator(document).iter_errors()]


# --- The committed files are the generated ones --------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_the_committed_document_is_what_the_code_generates(service: str) -> None:
    generated = docs.generate(ROOT)[docs.openapi_path(service)]
    on_disk = (ROOT / docs.openapi_path(service)).read_text(encoding="utf-8")

    assert on_disk == generated, f"{docs.openapi_path(service)} is out of date; {REGENERATE}"
    assert generated == docs.dumps(docs.service_openapi(service))


def test_one_document_per_service_and_nothing_else() -> None:
    files = {path.name for path in (ROOT / docs.OPENAPI).glob("*.json")}

    assert files == {f"{service}.json" for service in SERVICES}


def test_a_stale_or_changed_document_is_seen_by_the_drift_check(tmp_path: Any) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / docs.CONTRACT_MD).write_text(
        (ROOT / docs.CONTRACT_MD).read_text(encoding="utf-8"), encoding="utf-8")
    docs.write(tmp_path)
    changed = docs.openapi_path("aids")
    (tmp_path / changed).write_text("{}\n", encoding="utf-8")
    stale = docs.OPENAPI / "gone.json"
    (tmp_path / stale).write_text("{}\n", encoding="utf-8")

    assert set(docs.differences(tmp_path)) == {changed, stale}


# --- Valid OpenAPI 3.1 ---------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_each_document_is_valid_openapi_3_1(service: str) -> None:
    document = committed(service)

    assert document["openapi"].startswith("3.1.")
    assert not spec_errors(document)
    assert document["info"]["title"] == f"e2c {service}"
    assert "servers" not in document  # no address: each instance serves its own


def test_the_validity_check_catches_a_wrong_document() -> None:
    document = copy.deepcopy(committed("referrals"))
    parameter = document["paths"]["/referrals"]["get"]["parameters"][0]
    parameter["in"] = "body"  # OpenAPI 2's word

    assert spec_errors(document)


# --- Complete ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_of_the_app_is_in_its_document(service: str) -> None:
    app = service_http_app(service)
    document = committed(service)
    documented = {(path, method) for path, method, _ in operations(document)}

    served = set()
    for context in iter_route_contexts(app.routes):  # the included routers' routes too
        route = context.original_route
        assert isinstance(route, APIRoute), f"{route} is not a FastAPI route: undocumented"
        assert route.include_in_schema, route.path
        served |= {(str(context.path), method.lower()) for method in context.methods or ()}
    assert served == documented
    assert len(served) >= 9  # health (3), /ops/pipeline, documents (3), the service's own


@pytest.mark.parametrize("service", SERVICES)
def test_fastapis_own_pages_are_off(service: str) -> None:
    app = service_http_app(service)

    assert (app.openapi_url, app.docs_url, app.redoc_url) == (None, None, None)
    paths = {context.path for context in iter_route_contexts(app.routes)}
    assert not {"/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"} & paths
    assert "/docs/openapi.json" in paths


@pytest.mark.parametrize("service", SERVICES)
def test_the_bearer_scheme_guards_every_route_but_health(service: str) -> None:
    document = committed(service)

    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, operation in operations(document):
        if path in UNSECURED:
            assert "security" not in operation, path
            continue
        assert operation["security"] == [{"bearer": []}], (path, method)
        assert "401" in operation["responses"], (path, method)


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_answer_is_a_json_problem(service: str) -> None:
    document = committed(service)

    assert "HTTPValidationError" not in json.dumps(document)  # FastAPI's, echoing values
    assert document["components"]["schemas"]["Problem"]["required"] == ["detail"]
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                assert response["content"] == {"application/json": {"schema": PROBLEM}}, (
                    path, method, status)
        if any(parameter["in"] == "query" for parameter in operation.get("parameters", [])):
            # a bad one is answered, and the answer documented
            assert {"400", "422"} & set(operation["responses"]), (path, method)


@pytest.mark.parametrize("service", SERVICES)
def test_every_success_has_a_schema_and_operation_ids_are_unique(service: str) -> None:
    document = committed(service)
    ids = [operation["operationId"] for _, _, operation in operations(document)]

    assert len(ids) == len(set(ids))
    for path, method, operation in operations(document):
        successes = [response for status, response in operation["responses"].items()
                     if status.startswith("2")]
        assert successes, (path, method)
        for success in successes:  # 201 beside 200, 202 beside 200 (?wait=N)...
            for media in success["content"].values():
                assert media["schema"], (path, method)


def test_the_parameters_carry_the_codes_bounds() -> None:
    referrals, aids = committed("referrals"), committed("aids")

    listing = {p["name"]: p for p in referrals["paths"]["/referrals"]["get"]["parameters"]}
    assert (listing["page_size"]["schema"]["minimum"], listing["page_size"]["schema"]["maximum"]
            ) == (1, 500)
    year = aids["paths"]["/reports/finance"]["get"]["parameters"][0]
    assert (year["name"], year["required"]) == ("year", True)
    assert (year["schema"]["minimum"], year["schema"]["maximum"]) == (2000, 2100)
    stages = referrals["components"]["schemas"]["Stage"]["enum"]
    assert stages == ["accepted", "rejected", "pending_derogation", "duplicate", "expired",
                      "enrolled", "exited"]
