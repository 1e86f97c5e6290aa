"""The console's only way to the data: the services' HTTP APIs, called with the signed-in
user's own token, so that each service still decides what that role may see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from shared.settings import SERVICE_PORTS, Settings

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
# A console page -> the service route its role must be allowed to read.
PAGE_PROBES: dict[str, tuple[str, str]] = {
    "finance": ("aids", "/reports/finance"),
    "indicators": ("outcomes", "/reports/outcomes"),
    # Partners, outcomes and admin read a funnel; a partner only its own agency's.
    "partners": ("outcomes", "/reports/funnel"),
    "operations": ("referrals", "/ops/pipeline"),
}
# The last page of one referral each: answered 200 to a partner token only (admin must name
# an agency, other roles are refused), and it shows no referral, so reads no personal data.
PARTNER_PROBE = {"page": 10_000_000, "page_size": 1}


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

    async def outcomes_report(self, token: str, year: int) -> dict[str, Any]:
        return await self.json("outcomes", "/reports/outcomes", token, {"year": year})
    async def own_agency(self, token: str) -> str | None:
        """A partner token's agency, as the referrals service names it; None for another
        role (admin must name an agency, the others may not list referrals)."""
        try:
            probe = await self._get("referrals", "/referrals", token, PARTNER_PROBE)
        except httpx.HTTPError:
            return None
        if probe.status_code != 200:
            return None
        agency_id = probe.json().get("agency_id")
        return str(agency_id) if agency_id else None

    async def funnel(self, token: str, year: int, agency_id: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"year": year}
        if agency_id is not None:
            params["agency_id"] = agency_id
        return await self.json("outcomes", "/reports/funnel", token, params)

    async def referrals(self, token: str, agency_id: str, params: dict[str, Any]
                        ) -> dict[str, Any]:
        """A page of an agency's referrals (`params`: status, since, page, page_size)."""
        return await self.json("referrals", "/referrals", token,
                               {"agency_id": agency_id, **params})

    async def referral(self, token: str, referral_id: str) -> dict[str, Any]:
        return await self.json("referrals", f"/referrals/{quote(referral_id, safe='')}",
                               token, {})
    async def pipeline(self, token: str, service: str, limit: int) -> dict[str, Any]:
        """A service's `GET /ops/pipeline` (its newest `limit` dead letters)."""
        return await self.json(service, "/ops/pipeline", token, {"limit": limit})

    async def still_ops(self, token: str) -> bool:
        """Asked again before a change: does the token still read the pipeline (ops, admin)?
        A service that cannot be reached raises Refused(502)."""
        try:
            answer = await self._get("referrals", "/ops/pipeline", token, {"limit": 0})
        except httpx.HTTPError:
            raise Refused(502) from None
        return answer.status_code == 200

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
