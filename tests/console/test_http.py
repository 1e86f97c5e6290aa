"""The console over plain HTTP against the real services: sign-in, the session cookie's
flags, roles, cross-site refusals, sign-out."""

from __future__ import annotations

import httpx
import pytest

from tests import tokens
from tests.console.conftest import Console, csrf_of, signin

pytestmark = pytest.mark.infra

def test_finance_signs_in_with_a_strict_httponly_expiring_cookie(console: Console) -> None:
    client, answer = signin(console, tokens.FINANCE)
    assert answer.status_code == 303
    cookie = next(value for name, value in answer.headers.multi_items()
                  if name == "set-cookie" and value.startswith("e2c_session="))
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert tokens.FINANCE not in cookie
    page = client.get("/finance", params={"year": 2025})
    assert page.status_code == 200
    assert tokens.FINANCE not in page.text
    assert "Content-Security-Policy" in page.headers


@pytest.mark.parametrize("token", ["not-a-token-" + "x" * 30, ""])
def test_an_unknown_token_is_refused(console: Console, token: str) -> None:
    client, answer = signin(console, token)
    assert answer.status_code == 401
    assert "e2c_session" not in client.cookies
    assert client.get("/finance", follow_redirects=False).headers["location"] == "/signin"


def test_sign_in_without_the_form_secret_is_refused(console: Console) -> None:
    client = httpx.Client(base_url=console.url, timeout=10)
    client.get("/signin")
    forged = client.post("/signin", data={"token": tokens.FINANCE, "csrf": "forged"})
    assert forged.status_code == 403
    assert "e2c_session" not in client.cookies


def test_a_cross_site_sign_out_is_refused_and_a_real_one_ends_the_session(
    console: Console,
) -> None:
    client, _ = signin(console, tokens.FINANCE)
    page = client.get("/finance", params={"year": 2025})
    forged = client.post("/signout", data={"csrf": "guessed"})
    assert forged.status_code == 403
    other_site = client.post("/signout", data={"csrf": csrf_of(page)},
                             headers={"Origin": "https://evil.example"})
    assert other_site.status_code == 403
    assert client.get("/finance", params={"year": 2025}).status_code == 200
    out = client.post("/signout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    assert client.get("/finance", follow_redirects=False).status_code == 303


def test_the_csv_is_proxied_with_the_session_token(console: Console) -> None:
    client, _ = signin(console, tokens.FINANCE)
    answer = client.get("/finance.csv", params={"year": 2025})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.content.startswith(b"\xef\xbb\xbf")
    assert httpx.get(f"{console.url}/finance.csv").status_code in (303, 307)


def test_a_bad_year_is_a_400_page(console: Console) -> None:
    client, _ = signin(console, tokens.FINANCE)
    assert client.get("/finance", params={"year": "20x9"}).status_code == 400
