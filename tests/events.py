"""Builders of contract payloads for the tests (plain dicts, as partners would send them)."""

from __future__ import annotations

import random
import string
import uuid
from typing import Any


def new_id() -> str:
    return str(uuid.uuid4())


def unique_last_name() -> str:
    """A surname nobody else in the test run has, so that referrals are not duplicates."""
    return "Martin-" + "".join(random.choices(string.ascii_lowercase, k=10))


def referral(**overrides: Any) -> dict[str, Any]:
    """A valid, eligible referral of a new person; `candidate` overrides are merged in."""
    candidate = {
        "first_name": "Inès",
        "last_name": unique_last_name(),
        "birth_date": "2006-05-17",
        "email": None,
        "phone": None,
        "highest_qualification": "none",
        "in_school": False,
        "has_work_experience": False,
        "rqth": False,
        "qpv_resident": True,
    }
    candidate.update(overrides.pop("candidate", {}))
    event = {
        "event_id": new_id(),
        "occurred_at": "2024-03-04T09:12:00+01:00",
        "schema_version": 1,
        "referral_id": f"ML-TLS-{uuid.uuid4().hex[:12]}",
        "agency": {
            "kind": "mission_locale",
            "id": "ml-toulouse",
            "name": "Mission Locale de Toulouse",
        },
        "school_id": "toulouse",
        "candidate": candidate,
    }
    event.update(overrides)
    return event
