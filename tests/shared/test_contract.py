"""Unit tests of shared/contract.py against the examples and rules of docs/contract.md (no I/O)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel, ValidationError

from shared.contract import (
    ALL_TOPICS,
    INPUT_MODELS,
    MODELS,
    OUTCOME_CATEGORY,
    OUTPUT_MODELS,
    AidDecided,
    AidKind,
    AidReason,
    AidRequested,
    BudgetSubmitted,
    DeadLetter,
    EnrollmentDecided,
    Event,
    ExitSubmitted,
    Outcome,
    OutcomeCategory,
    ReferralSubmitted,
    Topic,
    event_key,
    new_event_fields,
    to_json_bytes,
)
from tests.events import EVENT_ID, EXAMPLES, REQUEST_EVENT_ID, TRAINEE_ID

T = Topic


def parse_event(topic: str, raw: bytes | str) -> BaseModel:
    """A raw message of `topic` validated by its model (raises ValidationError)."""
    return MODELS[Topic(topic)].model_validate_json(raw)


DROP = object()


def payload(topic: str, **changes: Any) -> dict[str, Any]:
    """The topic's example with changes; a key `a__b` is the nested field `a.b`."""
    data = copy.deepcopy(EXAMPLES[topic])
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        if value is DROP:
            del target[last]
        else:
            target[last] = value
    return data


def raw(topic: str, **changes: Any) -> bytes:
    return json.dumps(payload(topic, **changes), ensure_ascii=False).encode("utf-8")


def parse_both(topic: str, data: bytes) -> BaseModel:
    """Validate from bytes and from a decoded dict; both must agree."""
    model = MODELS[topic]
    from_json = model.model_validate_json(data)
    assert model.model_validate(json.loads(data)) == from_json
    return from_json


def assert_invalid(topic: str, data: bytes) -> None:
    model = MODELS[topic]
    with pytest.raises(ValidationError):
        model.model_validate_json(data)
    try:
        decoded = json.loads(data)
    except ValueError:
        return
    with pytest.raises(ValidationError):
        model.model_validate(decoded)


# --- Topics and registries ----------------------------------------------------------------


def test_topics() -> None:
    assert T.REFERRALS_SUBMITTED == "e2c.referrals.submitted.v1"
    assert T.DEADLETTER == "e2c.deadletter.v1"
    assert len(ALL_TOPICS) == 11
    assert all(t.startswith("e2c.") and t.endswith(".v1") for t in ALL_TOPICS)
    assert set(INPUT_MODELS) | set(OUTPUT_MODELS) == set(ALL_TOPICS)
    assert not set(INPUT_MODELS) & set(OUTPUT_MODELS)
    assert set(EXAMPLES) == set(ALL_TOPICS)


def test_outcome_categories() -> None:
    assert set(OUTCOME_CATEGORY) == set(Outcome)
    assert OUTCOME_CATEGORY[Outcome.QUALIFYING_TRAINING] is OutcomeCategory.TRAINING
    assert OUTCOME_CATEGORY[Outcome.DURABLE_EMPLOYMENT] is OutcomeCategory.EMPLOYMENT
    assert OUTCOME_CATEGORY[Outcome("civic_service")] is OutcomeCategory.DYNAMIC
    assert OUTCOME_CATEGORY[Outcome("dropout")] is OutcomeCategory.NONE


def test_aid_reasons_in_contract_order() -> None:
    assert [r.value for r in AidReason] == [
        "invalid_period",
        "invalid_quantity",
        "invalid_amount",
        "unknown_trainee",
        "period_outside_enrollment",
        "trainee_exited",
        "laptop_already_granted",
        "too_many_meals",
        "overlapping_period",
        "over_childcare_cap",
        "budget_exhausted",
    ]


# --- Examples parse -----------------------------------------------------------------------


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=str)
def test_contract_example_parses(topic: str) -> None:
    event = parse_both(topic, raw(topic))
    assert isinstance(event, Event)
    assert event.event_id == UUID(EVENT_ID)
    assert event.occurred_at == datetime(2024, 3, 4, 8, 12, tzinfo=UTC)
    assert event.schema_version == 1
    assert parse_event(topic, raw(topic)) == event


def test_example_values() -> None:
    referral = ReferralSubmitted.model_validate_json(raw(T.REFERRALS_SUBMITTED))
    assert referral.candidate.birth_date == date(2006, 5, 17)
    assert referral.candidate.first_name == "Inès"
    assert referral.agency.kind == "mission_locale"
    aid = AidRequested.model_validate_json(raw(T.AIDS_REQUESTED))
    assert aid.kind is AidKind.MEALS
    assert aid.quantity == 20
    assert aid.amount_cents is None


# --- Invalid messages: dead letters -------------------------------------------------------

R, D, E = T.REFERRALS_SUBMITTED, T.DEROGATIONS_SUBMITTED, T.ENROLLMENTS_SUBMITTED
A, B, X = T.AIDS_REQUESTED, T.BUDGETS_SUBMITTED, T.EXITS_SUBMITTED
LONG_ID = "A" * 65

INVALID: list[tuple[str, str, bytes]] = [
    # not JSON, or not an object
    (A, "not json", b"{not json"),
    (A, "empty", b""),
    (A, "truncated", raw(A)[:-1]),
    (A, "not utf-8", b'{"request_id": "\xff"}'),
    (A, "array", b"[]"),
    (A, "null", b"null"),
    (A, "string", b'"hello"'),
    # missing required fields
    *[
        (topic, f"missing {field}", raw(topic, **{field: DROP}))
        for topic, model in INPUT_MODELS.items()
        for field, info in model.model_fields.items()
        if info.is_required()
    ],
    (R, "missing candidate.birth_date", raw(R, candidate__birth_date=DROP)),
    (R, "missing candidate.in_school", raw(R, candidate__in_school=DROP)),
    (R, "missing agency.kind", raw(R, agency__kind=DROP)),
    (R, "missing agency.id", raw(R, agency__id=DROP)),
    # wrong types
    (A, "quantity string", raw(A, quantity="20")),
    (A, "quantity float", raw(A, quantity=20.0)),
    (A, "quantity bool", raw(A, quantity=True)),
    (A, "quantity null", raw(A, quantity=None)),
    (A, "amount float", raw(A, amount_cents=700.5)),
    (A, "amount integral float", raw(A, amount_cents=700.0)),
    (A, "amount string", raw(A, amount_cents="700")),
    (A, "request_id empty", raw(A, request_id="")),
    (A, "request_id number", raw(A, request_id=42)),
    (A, "trainee_id number", raw(A, trainee_id=42)),
    (A, "trainee_id null", raw(A, trainee_id=None)),
    (R, "in_school 1", raw(R, candidate__in_school=1)),
    (R, "in_school 'true'", raw(R, candidate__in_school="true")),
    (R, "rqth null", raw(R, candidate__rqth=None)),
    (R, "first_name empty", raw(R, candidate__first_name="")),
    (R, "last_name number", raw(R, candidate__last_name=7)),
    (R, "candidate string", raw(R, candidate="Inès Martin")),
    (R, "agency list", raw(R, agency=[])),
    (R, "school_id number", raw(R, school_id=31)),
    (R, "school_id null", raw(R, school_id=None)),
    (D, "granted 1", raw(D, granted=1)),
    (D, "granted 'true'", raw(D, granted="true")),
    (D, "granted null", raw(D, granted=None)),
    (X, "satisfied 'yes'", raw(X, satisfied="yes")),
    (X, "satisfied 1", raw(X, satisfied=1)),
    (B, "year string", raw(B, year="2024")),
    (B, "envelope string", raw(B, envelope_cents="21000000")),
    (B, "envelope float", raw(B, envelope_cents=210000.5)),
    (B, "envelope negative", raw(B, envelope_cents=-1)),
    # (1.1) integers beyond ±(2^53 - 1)
    (A, "quantity 2^53", raw(A, quantity=2**53)),
    (A, "quantity 2^70", raw(A, quantity=2**70)),
    (A, "quantity -2^53", raw(A, quantity=-(2**53))),
    (A, "amount 2^63", raw(A, kind="childcare", amount_cents=2**63)),
    (A, "quantity 5000 digits",
     raw(A, quantity=7).replace(b'"quantity": 7', b'"quantity": ' + b"9" * 5000)),
    (B, "envelope 2^53", raw(B, envelope_cents=2**53)),
    (B, "year 2^64", raw(B, year=2**64)),
    (T.ENROLLMENTS_DECIDED, "age 2^60", raw(T.ENROLLMENTS_DECIDED, age_at_entry=2**60)),
    (T.DEADLETTER, "partition string", raw(T.DEADLETTER, partition="2")),
    (T.AIDS_DECIDED, "reasons not a list", raw(T.AIDS_DECIDED, reasons="invalid_period")),
    # unknown enum values
    (R, "agency kind", raw(R, agency__kind="school")),
    (R, "qualification", raw(R, candidate__highest_qualification="master")),
    (R, "qualification case", raw(R, candidate__highest_qualification="BAC")),
    (A, "aid kind", raw(A, kind="bike")),
    (B, "budget kind", raw(B, kind="bike")),
    (X, "outcome", raw(X, outcome="retired")),
    (T.REFERRALS_DECIDED, "status", raw(T.REFERRALS_DECIDED, status="maybe")),
    (T.AIDS_DECIDED, "reason", raw(T.AIDS_DECIDED, reasons=["because"])),
    (T.EXITS_DECIDED, "category", raw(T.EXITS_DECIDED, category="solution")),
    # bad dates
    (R, "birth_date 2024-02-30", raw(R, candidate__birth_date="2024-02-30")),
    (R, "birth_date 2023-02-29", raw(R, candidate__birth_date="2023-02-29")),
    (R, "birth_date d/m/y", raw(R, candidate__birth_date="17/05/2006")),
    (R, "birth_date no padding", raw(R, candidate__birth_date="2006-5-17")),
    (R, "birth_date basic format", raw(R, candidate__birth_date="20060517")),
    (E, "enrolled_on datetime", raw(E, enrolled_on="2024-01-15T00:00:00")),
    (E, "enrolled_on datetime Z", raw(E, enrolled_on="2024-01-15T00:00:00Z")),
    (A, "period_start number", raw(A, period_start=20240201)),
    (A, "period_end month 13", raw(A, period_end="2024-13-01")),
    (X, "exited_on empty", raw(X, exited_on="")),
    # occurred_at
    (A, "naive occurred_at", raw(A, occurred_at="2024-03-04T09:12:00")),
    (A, "occurred_at date only", raw(A, occurred_at="2024-03-04")),
    (A, "occurred_at epoch", raw(A, occurred_at=1709539920)),
    (A, "occurred_at epoch string", raw(A, occurred_at="1709539920")),
    (A, "occurred_at garbage", raw(A, occurred_at="yesterday")),
    (A, "occurred_at bad day", raw(A, occurred_at="2024-02-30T09:12:00+01:00")),
    # schema_version
    (A, "schema_version 2", raw(A, schema_version=2)),
    (A, "schema_version '1'", raw(A, schema_version="1")),
    (A, "schema_version 1.0", raw(A, schema_version=1.0)),
    (A, "schema_version true", raw(A, schema_version=True)),
    (A, "schema_version 0", raw(A, schema_version=0)),
    (A, "schema_version null", raw(A, schema_version=None)),
    # event_id
    (A, "event_id not a uuid", raw(A, event_id="not-a-uuid")),
    (A, "event_id number", raw(A, event_id=123)),
    (A, "event_id empty", raw(A, event_id="")),
    (A, "event_id null", raw(A, event_id=None)),
    (T.AIDS_DECIDED, "request_event_id", raw(T.AIDS_DECIDED, request_event_id="x")),
    # referral_id
    (R, "referral_id space", raw(R, referral_id="ML TLS 2024")),
    (R, "referral_id 65 chars", raw(R, referral_id=LONG_ID)),
    (R, "referral_id empty", raw(R, referral_id="")),
    (R, "referral_id accent", raw(R, referral_id="ML-TLS-é")),
    (R, "referral_id slash", raw(R, referral_id="ML/TLS")),
    (R, "referral_id newline", raw(R, referral_id="ML-TLS\n")),
    (R, "referral_id number", raw(R, referral_id=123)),
    (D, "derogation referral_id space", raw(D, referral_id="ML TLS")),
    (E, "enrollment referral_id 65 chars", raw(E, referral_id=LONG_ID)),
]


@pytest.mark.parametrize(("topic", "case", "data"), INVALID, ids=lambda v: str(v)[:40])
def test_invalid_goes_to_dead_letter(topic: str, case: str, data: bytes) -> None:
    assert_invalid(topic, data)


# --- Business refusals stay valid ---------------------------------------------------------

VALID: list[tuple[str, str, bytes]] = [
    (A, "quantity 0", raw(A, quantity=0)),
    (A, "quantity negative", raw(A, quantity=-3)),
    (A, "laptop quantity 2", raw(A, kind="laptop", quantity=2, amount_cents=45000)),
    (A, "period_start after period_end", raw(A, period_start="2024-03-01")),
    (A, "amount negative", raw(A, kind="childcare", quantity=1, amount_cents=-100)),
    (A, "amount zero", raw(A, kind="laptop", quantity=1, amount_cents=0)),
    (A, "meals with an amount", raw(A, amount_cents=14000)),
    (A, "amount missing", raw(A, kind="laptop", quantity=1, amount_cents=DROP)),
    (A, "unknown trainee", raw(A, trainee_id="nobody")),
    (R, "unknown school_id", raw(R, school_id="atlantis")),
    (R, "empty school_id", raw(R, school_id="")),
    (R, "too old", raw(R, candidate__birth_date="1980-01-01")),
    (R, "birth date 29 Feb", raw(R, candidate__birth_date="2004-02-29")),
    (R, "has contacts", raw(R, candidate__email="ines@example.org", candidate__phone="0600")),
    (R, "contacts missing", raw(R, candidate__email=DROP, candidate__phone=DROP)),
    (R, "referral_id 64 chars", raw(R, referral_id="a" * 64)),
    (R, "referral_id 1 char", raw(R, referral_id="_")),
    (R, "referral_id all classes", raw(R, referral_id="aZ0._-")),
    (R, "occurred_at Z", raw(R, occurred_at="2024-03-04T08:12:00Z")),
    (R, "occurred_at fraction", raw(R, occurred_at="2024-03-04T08:12:00.123456-05:00")),
    (X, "satisfied null", raw(X, satisfied=None)),
    (X, "satisfied false", raw(X, satisfied=False)),
    (X, "satisfied missing", raw(X, satisfied=DROP)),
    (B, "envelope zero", raw(B, envelope_cents=0)),
    (A, "quantity 2^53 - 1", raw(A, quantity=2**53 - 1)),
    (A, "quantity -(2^53 - 1)", raw(A, quantity=-(2**53 - 1))),
    (B, "envelope 2^53 - 1", raw(B, envelope_cents=2**53 - 1)),
    (E, "unknown referral", raw(E, referral_id="nope")),
    (D, "refused", raw(D, granted=False)),
    # unknown extra fields are ignored, at every level
    (R, "extra top-level", raw(R, channel="web", priority=None)),
    (R, "extra nested", raw(R, agency__region="occitanie", candidate__nickname="Ini")),
    (A, "extra field", raw(A, comment={"any": ["thing"]})),
    (T.DEADLETTER, "extra field", raw(T.DEADLETTER, key="k")),
]


@pytest.mark.parametrize(("topic", "case", "data"), VALID, ids=lambda v: str(v)[:40])
def test_business_refusal_is_valid(topic: str, case: str, data: bytes) -> None:
    parse_both(topic, data)


def test_defaults_and_extras() -> None:
    aid = AidRequested.model_validate_json(raw(A, amount_cents=DROP, note="x"))
    assert aid.amount_cents is None
    assert "note" not in aid.model_dump()
    assert "note" not in json.loads(to_json_bytes(aid))
    exit_ = ExitSubmitted.model_validate_json(raw(X, satisfied=DROP))
    assert exit_.satisfied is None


def test_rejected_enrollment_profile_is_null() -> None:
    data = raw(
        T.ENROLLMENTS_DECIDED,
        status="rejected",
        reasons=["unknown_referral"],
        trainee_id=None,
        school_id=None,
        enrolled_on=None,
        agency_kind=None,
        age_at_entry=None,
        rqth=None,
        qpv_resident=None,
        has_work_experience=None,
    )
    event = parse_both(T.ENROLLMENTS_DECIDED, data)
    assert isinstance(event, EnrollmentDecided)
    assert event_key(T.ENROLLMENTS_DECIDED, event) == "ML-TLS-2024-000123"


def test_a_dead_letter_of_revision_1_0_still_reads() -> None:
    old = {key: value for key, value in EXAMPLES[T.DEADLETTER].items()
           if not key.startswith("original_")}
    letter = parse_both(T.DEADLETTER, json.dumps(old).encode())
    assert isinstance(letter, DeadLetter)
    assert (letter.original_base64, letter.original_truncated) == (None, False)


# --- Serialization ------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=str)
def test_round_trip(topic: str) -> None:
    event = MODELS[topic].model_validate_json(raw(topic))
    out = to_json_bytes(event)
    assert isinstance(out, bytes)
    assert MODELS[topic].model_validate_json(out) == event
    # same keys, same order, same values as the contract's example
    assert json.loads(out) == EXAMPLES[topic]
    assert list(json.loads(out)) == list(EXAMPLES[topic])


def test_serialized_forms() -> None:
    event = ReferralSubmitted.model_validate_json(raw(R))
    out = to_json_bytes(event)
    assert "Inès".encode() in out
    doc = json.loads(out)
    assert doc["event_id"] == EVENT_ID
    assert doc["occurred_at"] == "2024-03-04T09:12:00+01:00"
    assert doc["schema_version"] == 1
    assert doc["candidate"]["birth_date"] == "2006-05-17"
    aid = json.loads(to_json_bytes(AidDecided.model_validate_json(raw(T.AIDS_DECIDED))))
    assert aid["period_start"] == "2024-02-01"
    assert aid["request_event_id"] == REQUEST_EVENT_ID
    assert aid["amount_cents"] == 14000


def test_new_event_fields_build_an_output() -> None:
    fields = new_event_fields()
    assert fields["schema_version"] == 1
    assert isinstance(fields["event_id"], UUID)
    assert fields["occurred_at"].tzinfo is not None
    assert abs(datetime.now(UTC) - fields["occurred_at"]) < timedelta(seconds=5)
    assert new_event_fields()["event_id"] != fields["event_id"]
    decided = AidDecided(
        **fields,
        request_event_id=UUID(REQUEST_EVENT_ID),
        request_id="AID-1",
        trainee_id=TRAINEE_ID,
        kind=AidKind.LAPTOP,
        status="rejected",
        reasons=[AidReason.UNKNOWN_TRAINEE],
        quantity=1,
        amount_cents=45000,
        period_start=date(2024, 2, 1),
        period_end=date(2024, 2, 1),
    )
    doc = json.loads(to_json_bytes(decided))
    assert doc["event_id"] == str(fields["event_id"])
    assert doc["school_id"] is None
    assert doc["reasons"] == ["unknown_trainee"]
    assert AidDecided.model_validate_json(to_json_bytes(decided)) == decided


# --- Keys ---------------------------------------------------------------------------------

KEYS: list[tuple[str, str | None]] = [
    (T.REFERRALS_SUBMITTED, "ML-TLS-2024-000123"),
    (T.REFERRALS_DECIDED, "ML-TLS-2024-000123"),
    (T.DEROGATIONS_SUBMITTED, "ML-TLS-2024-000123"),
    (T.ENROLLMENTS_SUBMITTED, "ML-TLS-2024-000123"),
    (T.ENROLLMENTS_DECIDED, TRAINEE_ID),
    (T.AIDS_REQUESTED, TRAINEE_ID),
    (T.AIDS_DECIDED, TRAINEE_ID),
    (T.BUDGETS_SUBMITTED, "2024:meals"),
    (T.EXITS_SUBMITTED, TRAINEE_ID),
    (T.EXITS_DECIDED, TRAINEE_ID),
    (T.DEADLETTER, None),
]


@pytest.mark.parametrize(("topic", "key"), KEYS, ids=lambda v: str(v))
def test_event_key(topic: str, key: str | None) -> None:
    assert event_key(topic, MODELS[topic].model_validate_json(raw(topic))) == key


def test_event_key_checks_the_model() -> None:
    budget = BudgetSubmitted.model_validate_json(raw(B, kind="childcare"))
    assert event_key(str(T.BUDGETS_SUBMITTED), budget) == "2024:childcare"
    with pytest.raises(TypeError):
        event_key(T.AIDS_REQUESTED, budget)
    with pytest.raises(ValueError):
        event_key("e2c.unknown.v1", budget)
