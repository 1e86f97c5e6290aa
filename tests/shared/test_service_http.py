"""What every service serves besides its own routes, on the real app (`create_app`) whose
broker is never started: the AsyncAPI and OpenAPI documents behind a token, `/ops/pipeline`'s
limit, paths served as written (no redirect built from the Host header), and bad input
answered with a JSON 4xx that never echoes it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from deploy import contract_docs
from services.aids.app import create_app as aids_app
from services.outcomes.app import create_app as outcomes_app
from services.referrals.app import create_app as referrals_app
from shared.service import ServiceApp
from shared.settings import PROJECT_ROOT, Settings
from tests import tokens

BOOTSTRAP = "kafka.internal.example:19092"  # never contacted: the broker is not started
ADMIN = tokens.bearer(tokens.ADMIN)
FINANCE = tokens.bearer(tokens.FINANCE)
OPS = tokens.bearer(tokens.OPS)
PARTNER = tokens.bearer(tokens.ML_TOULOUSE)
FACTORIES: dict[str, Callable[[Settings], ServiceApp]] = {
    "referrals": referrals_app, "aids": aids_app, "outcomes": outcomes_app,
}
DOCS = "/docs/asyncapi"


def settings_in(folder: Path) -> Settings:
    tokens_file = tokens.write_tokens_file(folder / "tokens.json")
    return Settings(E2C_DATA_DIR=folder, KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
                    E2C_KAFKA_USERNAME="referrals", E2C_KAFKA_PASSWORD="never-connects",
                    E2C_TOKENS_FILE=tokens_file)


def served(name: str, folder: Path) -> Iterator[TestClient]:
    """The service's app, without its lifespan (no broker, relay or background task)."""
    app = FACTORIES[name](settings_in(folder))
    try:
        yield TestClient(app, follow_redirects=False, raise_server_exceptions=False)
    finally:
        app.ctx.engine.dispose()


@pytest.fixture(params=list(FACTORIES))
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    yield from served(request.param, tmp_path)


@pytest.fixture(params=list(FACTORIES))
def named_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, TestClient]]:
    for client in served(request.param, tmp_path):
        yield request.param, client


@pytest.fixture
def referrals(tmp_path: Path) -> Iterator[TestClient]:
    yield from served("referrals", tmp_path)


# --- The AsyncAPI document ----------------------------------------------------------------


@pytest.mark.parametrize("path", [DOCS, f"{DOCS}.json"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
def test_the_document_needs_a_token(
    service: TestClient, path: str, headers: dict[str, str]
) -> None:
    answer = service.get(path, headers=headers)

    assert answer.status_code == 401
    assert answer.json() == {"detail": "a valid bearer token is required"}


@pytest.mark.parametrize("headers", [FINANCE, OPS, PARTNER])
def test_any_role_reads_the_document(service: TestClient, headers: dict[str, str]) -> None:
    assert service.get(DOCS, headers=headers).status_code == 200
    assert service.get(f"{DOCS}.json", headers=headers).status_code == 200


def test_the_json_document_shows_no_broker_address_nor_group_id(service: TestClient) -> None:
    answer = service.get(f"{DOCS}.json", headers=OPS)

    document = answer.json()
    assert document["asyncapi"].startswith("3.")
    assert document["channels"]
    assert "servers" not in document
    assert all("servers" not in channel for channel in document["channels"].values())
    assert "#/servers" not in answer.text
    assert BOOTSTRAP not in answer.text and "kafka.internal" not in answer.text
    assert not re.search(r"e2c-(referrals|aids|outcomes)", answer.text)  # the group ids


def test_the_referrals_document_describes_its_inputs_and_outputs(referrals: TestClient) -> None:
    document = referrals.get(f"{DOCS}.json", headers=OPS).json()

    schemas = document["components"]["schemas"]
    assert {"ReferralSubmitted", "ReferralDecided", "EnrollmentDecided"} <= set(schemas)
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {"e2c.referrals.submitted.v1", "e2c.referrals.decided.v1"} <= addresses
    assert "e2c-referrals" not in json.dumps(document)


def test_the_page_is_rendered_here_without_scripts_or_network(service: TestClient) -> None:
    answer = service.get(DOCS, headers=OPS)

    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'"
    )
    page = answer.text.lower()
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    assert "http://" not in page and "https://" not in page
    assert BOOTSTRAP not in answer.text
    assert not re.search(r"e2c-(referrals|aids|outcomes)", answer.text)


def test_the_page_shows_each_channel_with_its_payload_schema(referrals: TestClient) -> None:
    page = referrals.get(DOCS, headers=OPS).text
    document = referrals.get(f"{DOCS}.json", headers=OPS).json()

    for channel in document["channels"].values():
        assert f"<code>{channel['address']}</code>" in page
    assert page.count("<pre>") >= len(document["channels"])
    assert "&quot;referral_id&quot;" in page  # a payload's fields, escaped inside <pre>


@pytest.mark.parametrize("path", [DOCS, f"{DOCS}.json", f"{DOCS}/try"])
def test_nothing_is_published_over_the_docs_paths(service: TestClient, path: str) -> None:
    answer = service.post(path, headers=OPS, json={"topic": "e2c.referrals.submitted.v1"})

    assert answer.status_code in (404, 405)
    assert answer.headers["content-type"] == "application/json"


# --- Paths are served as written ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/referrals/", "/health/live/", "/docs/asyncapi/"])
def test_a_trailing_slash_is_a_json_404_without_redirect(referrals: TestClient, path: str) -> None:
    answer = referrals.get(path, headers={**PARTNER, "Host": "evil.example"})

    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text


# --- GET /ops/pipeline ----------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["", "-1", "1001", "x", "1e3", "7" * 5000])
def test_a_bad_pipeline_limit_is_a_json_400_naming_limit(service: TestClient, limit: str) -> None:
    answer = service.get("/ops/pipeline", params={"limit": limit}, headers=OPS)

    assert answer.status_code == 400
    assert answer.json() == {"detail": "limit must be an integer from 0 to 1000"}


# --- Bad input: a JSON 4xx, never a 500, never the value sent ----------------------------

MARKER = "<script>alert(1)</script>"
BAD_INPUT = [
    ("/referrals", {"agency_id": MARKER, "page": MARKER}),
    ("/referrals", {"agency_id": "x", "since": MARKER, "status": MARKER, "page_size": MARKER}),
    ("/referrals", {"agency_id": "x\x00" + MARKER}),
    ("/referrals/" + MARKER, {}),
    ("/referrals/x%00y", {}),
    ("/reports/finance", {"year": MARKER}),
    ("/reports/finance.csv", {"year": "2024\x00" + MARKER}),
    ("/reports/outcomes", {"year": "9" * 5000 + MARKER}),
    ("/reports/funnel", {"year": "2024", "agency_id": "\x00" + MARKER}),
    ("/reports/aids-outcomes", {"year": ["2024", MARKER]}),
    ("/ops/pipeline", {"limit": MARKER}),
]


@pytest.mark.parametrize(("path", "params"), BAD_INPUT)
def test_bad_input_is_a_json_4xx_that_never_echoes_it(
    service: TestClient, path: str, params: dict[str, object]
) -> None:
    answer = service.get(path, params=params, headers=ADMIN)

    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"detail"}
    assert "script" not in answer.text and "alert" not in answer.text


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_a_wrong_method_is_a_json_405(service: TestClient, method: str) -> None:
    answer = service.request(method.upper(), "/health/live", headers=ADMIN)

    assert (answer.status_code, answer.json()) == (405, {"detail": "Method Not Allowed"})
    assert answer.headers["allow"] == "GET"


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_fastapis_own_documentation_pages_are_not_served(service: TestClient, path: str) -> None:
    answer = service.get(path, headers=ADMIN)

    assert (answer.status_code, answer.json()) == (404, {"detail": "Not Found"})


# --- The OpenAPI document -------------------------------------------------------------------

OPENAPI = "/docs/openapi.json"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}])
def test_the_openapi_document_needs_a_token(service: TestClient, headers: dict[str, str]) -> None:
    answer = service.get(OPENAPI, headers=headers)

    assert answer.status_code == 401
    assert answer.json() == {"detail": "a valid bearer token is required"}
    assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [FINANCE, OPS, PARTNER])
def test_any_role_reads_the_committed_openapi_document(
    named_service: tuple[str, TestClient], headers: dict[str, str]
) -> None:
    name, client = named_service

    answer = client.get(OPENAPI, headers=headers)

    assert answer.status_code == 200
    committed = (PROJECT_ROOT / contract_docs.openapi_path(name)).read_text(encoding="utf-8")
    assert answer.json() == json.loads(committed)
    assert answer.json()["openapi"].startswith("3.1.")
    assert BOOTSTRAP not in answer.text
