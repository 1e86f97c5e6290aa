"""The access trail on the command line: `e2c referrals audit` reads it from the referrals
service (`GET /audit`, admin), and `e2c deadletters list --show-original` records there the
originals it is about to show (`POST /audit/access`), showing none when that fails."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from shared.contract import Topic

TIMEOUT = 10.0
PAGE_SIZE = 500
MAX_KEY = 65  # a longer key names no referral (1 to 64 characters): not worth sending


class AuditUnavailable(Exception):
    """The referrals service did not answer, or refused (the reason, never a body)."""


def _call(method: str, url: str, token: str | None, **kwargs: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
    except httpx.HTTPError as error:
        raise AuditUnavailable(f"the referrals service does not answer on {url} "
                               f"({type(error).__name__})") from None
    if answer.status_code != 200:
        detail = _detail(answer)
        raise AuditUnavailable(f"the referrals service answered {answer.status_code} on "
                               f"{url}" + (f": {detail}" if detail else ""))
    body: dict[str, Any] = answer.json()
    return body


def _detail(answer: httpx.Response) -> str | None:
    try:
        detail = answer.json().get("detail")
    except ValueError:
        return None
    return detail if isinstance(detail, str) else None


def shown_letters(letters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the trail is told of the letters whose original is shown: their id, source
    topic and, on the submitted topic, their key (the referral_id)."""
    return [
        {"event_id": letter.get("event_id"), "source_topic": letter.get("source_topic"),
         "key": _key(letter)}
        for letter in letters
        if letter.get("original") is not None or letter.get("original_base64") is not None
    ]


def _key(letter: dict[str, Any]) -> str | None:
    key = letter.get("key")
    if letter.get("source_topic") != Topic.REFERRALS_SUBMITTED or not isinstance(key, str):
        return None
    return key[:MAX_KEY]


def record_shown_originals(
    base_url: str, token: str | None, letters: Sequence[dict[str, Any]]
) -> int:
    """Appends one audit row per letter whose original is about to be shown (their count);
    AuditUnavailable when the service cannot record them."""
    shown = shown_letters(letters)
    if not shown:
        return 0
    body = {"action": "show_dead_letter_original", "dead_letters": shown}
    answer = _call("POST", f"{base_url}/audit/access", token, json=body)
    return int(answer["recorded"])


def audit_rows(
    base_url: str, token: str | None, referral_id: str | None, since: str | None
) -> Iterator[dict[str, Any]]:
    """The trail's rows, oldest first, page after page."""
    params: dict[str, Any] = {"page_size": PAGE_SIZE}
    if referral_id:
        params["referral_id"] = referral_id
    if since:
        params["since"] = since
    page: int | None = 1
    while page is not None:
        answer = _call("GET", f"{base_url}/audit", token, params={**params, "page": page})
        yield from answer["items"]
        page = answer["next_page"]


def render_row(row: dict[str, Any]) -> str:
    who = f"{row['role']}:{row['agency_id']}" if row.get("agency_id") else row["role"]
    detail = " ".join(row.get("detail") or [])
    return (f"{row['at'][:19]}Z  {row['action']:<26} {who:<28} "
            f"{row.get('referral_id') or '-'}" + (f"  {detail}" if detail else ""))
