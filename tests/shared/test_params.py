"""How a request FastAPI refuses is answered (`shared.params`, through `shared.http.json_app`):
a 4xx `{"detail": ...}` naming each parameter or body field at fault and what it takes,
never the value sent. A small app of its own, with a JSON body as a partner's intake would
have one; no store, no broker."""

from __future__ import annotations

from datetime import date
from typing import Annotated
from uuid import UUID

import pytest
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.testclient import TestClient

from shared.http import json_app
from shared.params import ASCII_DIGITS, Expected, PrintableText
from shared.reports import year_param

MARKER = "<script>alert(1)</script>"


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first_name: str = Field(min_length=1, max_length=100)
    birth_date: date


class Intake(BaseModel):
    event_id: UUID
    referral_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    candidate: Candidate
    quantity: int = Field(ge=1)


router = APIRouter()


@router.get("/items")
async def items(
    page: Annotated[int, Query(ge=1, le=50), ASCII_DIGITS] = 1,
    name: Annotated[PrintableText | None, Query()] = None,
    limit: Annotated[int, Query(ge=0, le=9), ASCII_DIGITS,
                     Expected(status=400, wording="{name} must be {expected}")] = 3,
) -> dict[str, object]:
    return {"page": page, "name": name, "limit": limit}


@router.get("/report")
async def report(year: Annotated[int, Query(), ASCII_DIGITS] = 0) -> dict[str, int]:
    return {"year": year}


@router.get("/yearly")
async def yearly(year: Annotated[int, Depends(year_param)]) -> dict[str, int]:
    return {"year": year}


@router.post("/intake")
async def intake(body: Intake) -> dict[str, str]:
    return {"referral_id": body.referral_id}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(json_app([router]), raise_server_exceptions=False)


@pytest.mark.parametrize(("query", "status", "detail"), [
    ("page=0", 422, "invalid page: expected an integer from 1 to 50"),
    ("page=2.0", 422, "invalid page: expected an integer from 1 to 50"),
    ("page=+2", 422, "invalid page: expected an integer from 1 to 50"),
    ("page=%D9%A2", 422, "invalid page: expected an integer from 1 to 50"),  # Arabic-Indic 2
    ("page=" + "9" * 5000, 422, "invalid page: expected an integer from 1 to 50"),
    ("page=", 422, "invalid page: expected an integer from 1 to 50"),
    ("name=a%00b", 422, "invalid name: expected printable characters"),
    ("limit=10", 400, "limit must be an integer from 0 to 9"),
    ("page=0&limit=x", 422, "invalid page: expected an integer from 1 to 50; "
                            "limit must be an integer from 0 to 9"),
])
def test_a_bad_parameter_is_named_with_what_it_takes(
    client: TestClient, query: str, status: int, detail: str
) -> None:
    answer = client.get(f"/items?{query}")

    assert (answer.status_code, answer.json()) == (status, {"detail": detail})
    assert answer.headers["content-type"] == "application/json"


def test_good_parameters_pass(client: TestClient) -> None:
    answer = client.get("/items", params={"page": "007", "name": "Inès", "limit": "0"})

    assert answer.json() == {"page": 7, "name": "Inès", "limit": 0}


def test_a_required_parameter_missing_or_empty_is_said_required(client: TestClient) -> None:
    for params in ({}, {"year": ""}):
        answer = client.get("/yearly", params=params)
        assert answer.json() == {"detail": "year is required: an integer from 2000 to 2100"}
    assert client.get("/yearly", params={"year": "1999"}).json() == {
        "detail": "invalid year: expected an integer from 2000 to 2100"}
    assert client.get("/report", params={"year": "x"}).json() == {
        "detail": "invalid year: expected an integer"}


@pytest.mark.parametrize("field", ["page", "name", "limit"])
def test_the_value_sent_is_never_echoed(client: TestClient, field: str) -> None:
    answer = client.get("/items", params={field: MARKER + "\x00"})

    assert 400 <= answer.status_code < 500
    assert field in answer.json()["detail"]
    assert "script" not in answer.text and "alert" not in answer.text


GOOD = {"event_id": "3f6f1a2e-8d2b-4a7e-9c1d-2b5e8f0a6c11", "referral_id": "ML-TLS-1",
        "candidate": {"first_name": "Inès", "birth_date": "2006-05-17"}, "quantity": 1}


@pytest.mark.parametrize(("change", "detail"), [
    ({"candidate": {"first_name": "Inès"}}, "candidate.birth_date is required"),
    ({"candidate": {**GOOD["candidate"], "birth_date": MARKER}}, "invalid candidate.birth_date"),
    ({"candidate": {**GOOD["candidate"], "nickname": MARKER}}, "invalid candidate.nickname: "
                                                               "Extra inputs are not permitted"),
    ({"quantity": 0}, "invalid quantity: Input should be greater than or equal to 1"),
    ({"quantity": MARKER}, "invalid quantity: Input should be a valid integer, unable to parse "
                           "string as an integer"),
    ({"event_id": "3f6f1a2e-" + MARKER}, "invalid event_id"),
    ({"referral_id": MARKER}, "invalid referral_id: String should match pattern "
                              "'^[A-Za-z0-9._-]{1,64}$'"),
])
def test_a_bad_body_field_is_named_by_its_path(
    client: TestClient, change: dict[str, object], detail: str
) -> None:
    answer = client.post("/intake", json={**GOOD, **change})

    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(detail)
    assert "script" not in answer.text and "alert" not in answer.text


def test_a_body_that_is_not_json_is_a_422_without_it(client: TestClient) -> None:
    answer = client.post("/intake", content=b'{"referral_id": "<script>',
                         headers={"content-type": "application/json"})

    assert (answer.status_code, answer.json()) == (422, {"detail": "invalid body: expected JSON"})


def test_a_good_body_passes(client: TestClient) -> None:
    assert client.post("/intake", json=GOOD).json() == {"referral_id": "ML-TLS-1"}
