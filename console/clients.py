"""The console's only way to the data: the services' HTTP APIs, called with the signed-in
user's own token, so that each service still decides what that role may see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from shared.settings import SERVICE_PORTS, Settings

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# A console page -> the service route its role must be allowed to read.
PAGE_PROBES: dict[str, tuple[str, str]] = {
    "finance": ("aids", "/reports/finance"),
}


class Refused(Exception):
    """A service answered 401 or 403 (or could not be reached: 502)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Verdict:
    known: bool  # some service knows the token
    pages: frozenset[str]


class ServiceClients:
    def __init__(self, settings: Settings) -> None:
        self._clients = {
            name: httpx.AsyncClient(base_url=settings.service_url(name), timeout=TIMEOUT)
            for name in SERVICE_PORTS
        }

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def pages_of(self, token: str, year: int) -> Verdict:
        """Which console pages `token` opens, asked of the services themselves."""
        known, pages = False, set()
        for page, (service, path) in PAGE_PROBES.items():
            try:
                answer = await self._get(service, path, token, {"year": year})
            except httpx.HTTPError:
                continue
            known = known or answer.status_code != 401
            if answer.status_code == 200:
                pages.add(page)
        return Verdict(known, frozenset(pages))

    async def finance_report(self, token: str, year: int) -> dict[str, Any]:
        return await self.json("aids", "/reports/finance", token, {"year": year})

    async def json(self, service: str, path: str, token: str,
                   params: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._get(service, path, token, params)
        except httpx.HTTPError:
            raise Refused(502) from None
        if answer.status_code != 200:
            raise Refused(answer.status_code)
        body: dict[str, Any] = answer.json()
        return body

    async def download(self, service: str, path: str, token: str, params: dict[str, Any]
                       ) -> tuple[httpx.Response, AsyncIterator[bytes]]:
        """A file of a service, streamed: its answer (status, headers) and its body."""
        client = self._clients[service]
        request = client.build_request("GET", path, params=params, headers=_bearer(token))
        try:
            answer = await client.send(request, stream=True)
        except httpx.HTTPError:
            raise Refused(502) from None
        if answer.status_code != 200:
            await answer.aclose()
            raise Refused(answer.status_code)
        return answer, _body(answer)

    async def _get(self, service: str, path: str, token: str,
                   params: dict[str, Any]) -> httpx.Response:
        return await self._clients[service].get(path, params=params, headers=_bearer(token))


async def _body(answer: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in answer.aiter_bytes():
            yield chunk
    finally:
        await answer.aclose()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
