"""Where the console reaches the services: by port on its own host (`e2c stack up`), or by
the base URLs compose gives it (http://aids:8002)."""

from __future__ import annotations

import pytest

from console.clients import ServiceClients
from shared.settings import Settings


def test_by_default_each_service_is_on_this_host_at_its_port() -> None:
    settings = Settings(host="127.0.0.1", aids_port=18002, aids_url=None)
    assert settings.service_url("aids") == "http://127.0.0.1:18002"


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_listening_address_is_reached_on_loopback(wildcard: str) -> None:
    settings = Settings(host=wildcard, outcomes_port=8003, outcomes_url=None)
    assert settings.service_url("outcomes") == "http://127.0.0.1:8003"


async def test_a_base_url_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, url in {"REFERRALS_URL": "http://referrals:8001/", "AIDS_URL": "http://aids:8002",
                      "OUTCOMES_URL": "http://outcomes:8003"}.items():
        monkeypatch.setenv(name, url)
    settings = Settings()
    clients = ServiceClients(settings)
    try:
        assert {name: str(client.base_url) for name, client in clients._clients.items()} == {
            "referrals": "http://referrals:8001", "aids": "http://aids:8002",
            "outcomes": "http://outcomes:8003"}
    finally:
        await clients.close()
