"""What every service serves besides its own routes, on the real app (`create_app`) whose
broker is never started: `/ops/pipeline`'s limit, and paths served as written (no
redirect built from the Host header)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.aids.app import create_app as aids_app
from services.outcomes.app import create_app as outcomes_app
from services.referrals.app import create_app as referrals_app
from shared.service import ServiceApp
from shared.settings import Settings

BOOTSTRAP = "kafka.internal.example:19092"  # never contacted: the broker is not started
TOKENS = {"tok-finance": "finance", "tok-ops": "ops", "tok-ml": "partner:ml-toulouse"}
OPS = {"Authorization": "Bearer tok-ops"}
PARTNER = {"Authorization": "Bearer tok-ml"}
FACTORIES: dict[str, Callable[[Settings], ServiceApp]] = {
    "referrals": referrals_app, "aids": aids_app, "outcomes": outcomes_app,
}


def settings_in(folder: Path) -> Settings:
    tokens = folder / "tokens.json"
    tokens.write_text(json.dumps(TOKENS), encoding="utf-8")
    return Settings(E2C_DATA_DIR=folder, KAFKA_BOOTSTRAP_SERVERS=BOOTSTRAP,
                    E2C_TOKENS_FILE=tokens)


def served(name: str, folder: Path) -> Iterator[TestClient]:
    """The service's app, without its lifespan (no broker, relay or background task)."""
    app = FACTORIES[name](settings_in(folder))
    try:
        yield TestClient(app, follow_redirects=False)
    finally:
        app.ctx.engine.dispose()


@pytest.fixture(params=list(FACTORIES))
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    yield from served(request.param, tmp_path)


@pytest.fixture
def referrals(tmp_path: Path) -> Iterator[TestClient]:
    yield from served("referrals", tmp_path)


# --- Paths are served as written ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/referrals/", "/health/live/"])
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
