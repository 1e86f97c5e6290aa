"""A small demo batch: referrals as partners send them, and the decisions that come back."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared.contract import Topic
from shared.kafka_access import KafkaAccess


def born_aged(years: int) -> str:
    """A birth date making the person `years` old today (born on the 1st of this month)."""
    today = date.today()
    return date(today.year - years, today.month, 1).isoformat()


DEMO_PROFILES: list[tuple[str, str, dict[str, Any], str]] = [
    # (agency kind, school, candidate overrides, what it shows)
    ("mission_locale", "toulouse", {"birth_date": born_aged(18)}, "eligible"),
    ("france_travail", "montpellier-1", {"birth_date": born_aged(21)}, "eligible"),
    ("spontaneous", "perpignan", {"birth_date": born_aged(15)}, "under 16"),
    ("mlds", "nimes", {"birth_date": born_aged(26)}, "26: needs a derogation"),
    ("mission_locale", "beziers", {"birth_date": born_aged(31)}, "over 29"),
    ("mission_locale", "carcassonne", {"highest_qualification": "bac"}, "has a diploma"),
    ("other", "ales", {"in_school": True}, "still in school"),
    ("mission_locale", "paris", {}, "unknown school"),
]


def demo_referral(kind: str, school: str, overrides: dict[str, Any]) -> dict[str, Any]:
    candidate = {
        "first_name": "Camille", "last_name": f"Demo{uuid.uuid4().hex[:6]}",
        "birth_date": born_aged(19), "email": None, "phone": None,
        "highest_qualification": "none", "in_school": False, "has_work_experience": False,
        "rqth": False, "qpv_resident": True, **overrides,
    }
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
        "schema_version": 1,
        "referral_id": f"DEMO-{date.today():%Y}-{uuid.uuid4().hex[:8]}",
        "agency": {"kind": kind, "id": f"{kind.replace('_', '-')}-demo", "name": "Demo agency"},
        "school_id": school,
        "candidate": candidate,
    }


async def run_demo(
    partner: KafkaAccess, reader: KafkaAccess, timeout: float = 60
) -> list[dict[str, Any]]:
    """Refers the demo's cases as a partner's principal; reads the answers as ops."""
    sent = [(demo_referral(k, s, o), what) for k, s, o, what in DEMO_PROFILES]
    producer = AIOKafkaProducer(**partner.client_options(), linger_ms=5, acks="all")
    await producer.start()
    try:
        for event, _ in sent:
            await producer.send(Topic.REFERRALS_SUBMITTED, json.dumps(event).encode(),
                                key=event["referral_id"].encode())
        await producer.send(Topic.REFERRALS_SUBMITTED, b'{"referral_id": "DEMO-broken"',
                            key=b"DEMO-broken")
        await producer.flush()
    finally:
        await producer.stop()
    answers = await _collect({e["event_id"] for e, _ in sent}, reader, timeout)
    rows = []
    for event, what in sent:
        answer = answers.get(event["event_id"], {})
        rows.append({"referral_id": event["referral_id"], "agency": event["agency"]["kind"],
                     "school": event["school_id"], "case": what,
                     "status": answer.get("status", "(no answer)"),
                     "reasons": ",".join(answer.get("reasons", []))})
    return rows


async def _collect(event_ids: set[str], reader: KafkaAccess, timeout: float) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(Topic.REFERRALS_DECIDED, **reader.client_options(),
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    answers: dict[str, Any] = {}
    try:
        async with asyncio.timeout(timeout):
            async for record in consumer:
                body = json.loads(record.value)
                if body.get("request_event_id") in event_ids:
                    answers[body["request_event_id"]] = body
                    if len(answers) == len(event_ids):
                        break
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return answers


def print_rows(rows: list[dict[str, Any]]) -> None:
    columns = [c for c in ("referral_id", "agency", "school", "case", "http", "status",
                           "reasons") if c in rows[0]]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


DEMO_AGENCY = {"kind": "mission_locale", "id": "ml-demo-http", "name": "Mission Locale (demo)"}
HTTP_PROFILES: list[tuple[str, dict[str, Any], str]] = [
    ("toulouse", {"birth_date": born_aged(20)}, "eligible"),
    ("nimes", {"birth_date": born_aged(27)}, "27: needs a derogation"),
    ("ales", {"highest_qualification": "cap_bep"}, "has a diploma"),
]


def run_http_demo(referrals_url: str, token: str, wait: int = 10) -> list[dict[str, Any]]:
    """A partner without Kafka: each referral POSTed with its token, `?wait` for the
    decision (what a partner's software does in a few lines)."""
    import httpx

    rows = []
    for school, overrides, what in HTTP_PROFILES:
        body = demo_referral(DEMO_AGENCY["kind"], school, overrides)
        for name in ("event_id", "occurred_at", "schema_version"):
            body.pop(name)  # the service sets them
        body["agency"] = DEMO_AGENCY
        answer = httpx.post(f"{referrals_url}/referrals", params={"wait": wait}, json=body,
                            headers={"Authorization": f"Bearer {token}"}, timeout=wait + 10)
        decided = answer.json() if answer.status_code == 200 else {}
        rows.append({"referral_id": body["referral_id"], "agency": DEMO_AGENCY["id"],
                     "school": school, "case": what, "http": answer.status_code,
                     "status": decided.get("status", "(no answer)"),
                     "reasons": ",".join(decided.get("reasons", []))})
    return rows
