"""Sign-in past the unknown tokens one address may try in a minute: 429 with Retry-After and
a French message, even for a good token; another address still signs in. The console runs
in the test (its own limit of 3, so the suite's console is not slowed) against the stack."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from console.app import create_app
from shared.settings import Settings
from tests import tokens
from tests.console.conftest import CSRF

pytestmark = pytest.mark.infra

LIMIT = 3
GUESSER, NEIGHBOUR = "203.0.113.7", "198.51.100.9"


@pytest.fixture
def console_app(stack: Any) -> FastAPI:
    ports = {f"{name}_port": stack.services[name].port
             for name in ("referrals", "aids", "outcomes")}
    return create_app(Settings(**ports, console_signin_refusals_per_minute=LIMIT))


@contextlib.asynccontextmanager
async def client_from(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test",
                                 timeout=10) as client:
        yield client


async def try_token(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/signin")
    found = CSRF.search(form.text)
    assert found
    return await client.post("/signin", data={"token": token, "csrf": found.group(1)})


async def test_past_the_refused_tokens_of_a_minute_sign_in_answers_429(
    console_app: FastAPI,
) -> None:
    async with client_from(console_app, GUESSER) as guesser:
        for attempt in range(LIMIT):
            answer = await try_token(guesser, f"guess-{attempt}-" + "x" * 32)
            assert answer.status_code == 401, attempt

        stopped = await try_token(guesser, tokens.FINANCE)

        assert stopped.status_code == 429
        assert 1 <= int(stopped.headers["Retry-After"]) <= 60
        assert "Trop de jetons refusés" in stopped.text
        assert f"réessayez dans {stopped.headers['Retry-After']}" in stopped.text
        assert tokens.FINANCE not in stopped.text
        assert "e2c_session" not in guesser.cookies

    async with client_from(console_app, NEIGHBOUR) as neighbour:
        answer = await try_token(neighbour, tokens.FINANCE)
        assert answer.status_code == 303
        assert "e2c_session" in neighbour.cookies


async def test_good_tokens_and_pageless_roles_never_count(console_app: FastAPI) -> None:
    """An office behind one address: each person signs in from a browser of their own."""
    for _ in range(LIMIT + 2):
        for token in (tokens.FINANCE, tokens.OUTCOMES):
            async with client_from(console_app, GUESSER) as person:
                answer = await try_token(person, token)
                # finance opens a page; outcomes is known, with or without a page of its own
                wanted = (303,) if token == tokens.FINANCE else (303, 403)
                assert answer.status_code in wanted, answer.status_code
    async with client_from(console_app, GUESSER) as person:
        assert (await try_token(person, "unknown-" + "x" * 32)).status_code == 401
