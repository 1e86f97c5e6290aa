"""The contract's payloads for the tests, as partners and services send them (plain dicts):
the contract's examples, and one builder per event kind.

A builder starts from the topic's example, with a new `event_id` (and `request_event_id`),
new identifiers where the event creates something (a referral, an aid request), and the
defaults the tests share; its keyword arguments replace fields (`referral`'s `candidate`
ones are merged into the candidate)."""

from __future__ import annotations

import copy
import hashlib
import random
import string
import uuid
from typing import Any

from shared.contract import Topic


def new_id() -> str:
    return str(uuid.uuid4())


def unique_last_name() -> str:
    """A surname nobody else in the test run has, so that referrals are not duplicates."""
    return "Martin-" + "".join(random.choices(string.ascii_lowercase, k=10))


EVENT_ID = "6f1c2a9e-8d1b-4c55-9e0f-3b8a2f6d7c41"
REQUEST_EVENT_ID = "0b7e3f6a-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
TRAINEE_ID = "tr_5Qm2xv8LrK"
HEAD = {"event_id": EVENT_ID, "occurred_at": "2024-03-04T09:12:00+01:00", "schema_version": 1}

# The contract's examples, "…" filled in, keys in the contract's order.
EXAMPLES: dict[str, dict[str, Any]] = {
    Topic.REFERRALS_SUBMITTED: {
        **HEAD,
        "referral_id": "ML-TLS-2024-000123",
        "agency": {
            "kind": "mission_locale",
            "id": "ml-toulouse",
            "name": "Mission Locale de Toulouse",
        },
        "school_id": "toulouse",
        "candidate": {
            "first_name": "Inès",
            "last_name": "Martin",
            "birth_date": "2006-05-17",
            "email": None,
            "phone": None,
            "highest_qualification": "none",
            "in_school": False,
            "has_work_experience": False,
            "rqth": False,
            "qpv_resident": True,
        },
    },
    Topic.REFERRALS_DECIDED: {
        **HEAD,
        "request_event_id": REQUEST_EVENT_ID,
        "referral_id": "ML-TLS-2024-000123",
        "agency_id": "ml-toulouse",
        "school_id": "toulouse",
        "status": "accepted",
        "reasons": [],
        "trainee_id": TRAINEE_ID,
        "duplicate_of": None,
    },
    Topic.DEROGATIONS_SUBMITTED: {
        **HEAD,
        "referral_id": "ML-TLS-2024-000123",
        "granted": True,
        "decided_by": "directrice.toulouse",
    },
    Topic.ENROLLMENTS_SUBMITTED: {
        **HEAD,
        "referral_id": "ML-TLS-2024-000123",
        "school_id": "toulouse",
        "enrolled_on": "2024-01-15",
    },
    Topic.ENROLLMENTS_DECIDED: {
        **HEAD,
        "request_event_id": REQUEST_EVENT_ID,
        "referral_id": "ML-TLS-2024-000123",
        "status": "enrolled",
        "reasons": [],
        "trainee_id": TRAINEE_ID,
        "school_id": "toulouse",
        "enrolled_on": "2024-01-15",
        "agency_kind": "mission_locale",
        "age_at_entry": 19,
        "rqth": False,
        "qpv_resident": True,
        "has_work_experience": False,
    },
    Topic.AIDS_REQUESTED: {
        **HEAD,
        "request_id": "AID-2024-000042",
        "trainee_id": TRAINEE_ID,
        "kind": "meals",
        "quantity": 20,
        "amount_cents": None,
        "period_start": "2024-02-01",
        "period_end": "2024-02-29",
    },
    Topic.BUDGETS_SUBMITTED: {**HEAD, "year": 2024, "kind": "meals", "envelope_cents": 21000000},
    Topic.AIDS_DECIDED: {
        **HEAD,
        "request_event_id": REQUEST_EVENT_ID,
        "request_id": "AID-2024-000042",
        "trainee_id": TRAINEE_ID,
        "school_id": "toulouse",
        "kind": "meals",
        "status": "granted",
        "reasons": [],
        "quantity": 20,
        "amount_cents": 14000,
        "period_start": "2024-02-01",
        "period_end": "2024-02-29",
    },
    Topic.EXITS_SUBMITTED: {
        **HEAD,
        "trainee_id": TRAINEE_ID,
        "exited_on": "2024-09-30",
        "outcome": "durable_employment",
        "satisfied": True,
    },
    Topic.EXITS_DECIDED: {
        **HEAD,
        "request_event_id": REQUEST_EVENT_ID,
        "trainee_id": TRAINEE_ID,
        "school_id": "toulouse",
        "status": "recorded",
        "reasons": [],
        "outcome": "durable_employment",
        "category": "employment",
        "exited_on": "2024-09-30",
    },
    Topic.DEADLETTER: {
        **HEAD,
        "service": "aids",
        "source_topic": "e2c.aids.requested.v1",
        "partition": 2,
        "offset": 1234,
        "error": "quantity: Input should be a valid integer",
        "original": '{"quantity": "20"}',
        "original_base64": None,  # (1.1) the fields below
        "original_truncated": False,
        "original_bytes": 18,
        "original_sha256": "0" * 64,
    },
}


def _event(topic: Topic, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The example of `topic` with new event ids, then `defaults`, then `overrides`."""
    event = copy.deepcopy(EXAMPLES[topic])
    event["event_id"] = new_id()
    if "request_event_id" in event:
        event["request_event_id"] = new_id()
    event.update(defaults)
    event.update(overrides)
    return event


# --- What partners send ---------------------------------------------------------------------


def referral(**overrides: Any) -> dict[str, Any]:
    """A valid, eligible referral of a new person; `candidate` overrides are merged in."""
    candidate = {
        **EXAMPLES[Topic.REFERRALS_SUBMITTED]["candidate"],
        "last_name": unique_last_name(),
        **overrides.pop("candidate", {}),
    }
    fresh = {"referral_id": f"ML-TLS-{uuid.uuid4().hex[:12]}", "candidate": candidate}
    return _event(Topic.REFERRALS_SUBMITTED, fresh, overrides)


def derogation(referral_id: str, **overrides: Any) -> dict[str, Any]:
    """The school's answer (granted unless told) for a referral pending a derogation."""
    return _event(Topic.DEROGATIONS_SUBMITTED, {"referral_id": referral_id}, overrides)


def enrollment(referral_id: str, **overrides: Any) -> dict[str, Any]:
    """An enrollment of the referral at Toulouse on 2024-01-15."""
    return _event(Topic.ENROLLMENTS_SUBMITTED, {"referral_id": referral_id}, overrides)


def aid_request(trainee_id: str, kind: str, **overrides: Any) -> dict[str, Any]:
    """A new request of one `kind` of aid, quantity 1, for 2024-02-01, no amount."""
    fresh = {"request_id": f"AID-{uuid.uuid4().hex[:12]}", "trainee_id": trainee_id,
             "kind": kind, "quantity": 1, "amount_cents": None,
             "period_start": "2024-02-01", "period_end": "2024-02-01"}
    return _event(Topic.AIDS_REQUESTED, fresh, overrides)


def budget(kind: str, envelope_cents: int, **overrides: Any) -> dict[str, Any]:
    """The envelope of `kind` for 2024 (`year` to change it)."""
    fresh = {"kind": kind, "envelope_cents": envelope_cents}
    return _event(Topic.BUDGETS_SUBMITTED, fresh, overrides)


def exit_submitted(trainee_id: str, **overrides: Any) -> dict[str, Any]:
    """The trainee left on 2024-09-30 for durable employment, satisfied."""
    return _event(Topic.EXITS_SUBMITTED, {"trainee_id": trainee_id}, overrides)


# --- What the services publish --------------------------------------------------------------


def referral_decided(referral_id: str, **overrides: Any) -> dict[str, Any]:
    """The referral accepted, from ml-toulouse to Toulouse."""
    return _event(Topic.REFERRALS_DECIDED, {"referral_id": referral_id}, overrides)


def enrollment_decided(trainee_id: str, **overrides: Any) -> dict[str, Any]:
    """The trainee enrolled at Toulouse on 2024-01-15 (referred by a mission locale, 19,
    living in a QPV, no RQTH, no work experience), from the referral R-<trainee_id>."""
    fresh = {"trainee_id": trainee_id, "referral_id": f"R-{trainee_id[:10]}"}
    return _event(Topic.ENROLLMENTS_DECIDED, fresh, overrides)


def aid_decided(trainee_id: str, kind: str, **overrides: Any) -> dict[str, Any]:
    """A new request of `kind` granted to the trainee at Toulouse."""
    fresh = {"request_id": f"AID-{uuid.uuid4().hex[:12]}", "trainee_id": trainee_id,
             "kind": kind}
    return _event(Topic.AIDS_DECIDED, fresh, overrides)


def exit_decided(trainee_id: str, **overrides: Any) -> dict[str, Any]:
    """The trainee's exit of 2024-09-30 (durable employment) recorded at Toulouse."""
    return _event(Topic.EXITS_DECIDED, {"trainee_id": trainee_id}, overrides)


def dead_letter(original: str, **overrides: Any) -> dict[str, Any]:
    """A letter keeping `original` whole (its size and digest those of `original`)."""
    raw = original.encode("utf-8")
    fresh = {"original": original, "original_bytes": len(raw),
             "original_sha256": hashlib.sha256(raw).hexdigest()}
    return _event(Topic.DEADLETTER, fresh, overrides)
