"""Sign-in past the unknown tokens one address may try in a minute: 429 with Retry-After and
a French message, even for a good token; another address still signs in. The console runs
in the test (its own limit of 3, so the suite's console is not slowed) against the stack."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.common.by import By

from console.app import create_app
from deploy.harness import ServiceProcesses, free_port
from shared.private_files import open_private_append
from shared.settings import PROJECT_ROOT, Settings
from tests import tokens
from tests.console.conftest import (
    CSRF,
    Console,
    _wait_health,
    screenshot,
    sign_in,
    text_of,
)

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


@pytest.fixture
def braked_console(stack: ServiceProcesses) -> Iterator[Console]:
    """A console process of its own that stops an address after one unknown token."""
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("E2C_KAFKA_") and not name.endswith("_DATABASE_URL")}
    env.update(CONSOLE_PORT=str(port), E2C_CONSOLE_SIGNIN_REFUSALS_PER_MINUTE="1",
               PYTHONUNBUFFERED="1",
               **{f"{name.upper()}_PORT": str(stack.services[name].port)
                  for name in ("referrals", "aids", "outcomes")})
    log_path = stack.data_dir / "console-braked.log"
    with open_private_append(log_path) as log:
        process = subprocess.Popen([sys.executable, "-m", "console"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, process)
        yield Console(url, process, log_path)
    finally:
        process.terminate()
        process.wait(20)


def test_the_browser_shows_why_and_how_long_in_french(
    fresh_browser: webdriver.Chrome, braked_console: Console
) -> None:
    browser = fresh_browser
    sign_in(browser, braked_console, "a-guess-" + "g" * 32)
    assert "Jeton inconnu" in text_of(browser.find_element(By.CSS_SELECTOR, "[role=alert]"))

    sign_in(browser, braked_console, tokens.FINANCE)

    alert = text_of(browser.find_element(By.CSS_SELECTOR, "[role=alert]"))
    assert alert.startswith("Trop de jetons refusés depuis votre adresse : réessayez dans ")
    assert browser.get_cookie("e2c_session") is None
    screenshot(browser, "signin-429")
    browser.set_window_size(375, 800)
    screenshot(browser, "signin-429-phone")
