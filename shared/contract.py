"""The E2C event contract v1 (docs/contract.md, revision 1.1) as pydantic v2 models.

Topic names, enums, one model per topic, Kafka keys and small helpers live here and only here.
A message that fails validation against its topic's model goes to the dead-letter topic;
business refusals (bad quantity, period, amount, unknown school...) are valid messages.

Validation gives the same answer whether a message is parsed from raw bytes
(`Model.model_validate_json`) or from an already decoded dict (`Model.model_validate`):
integers and booleans are strict (no `"20"`, `20.0`, `1` for a bool), dates must be real
`YYYY-MM-DD` strings, `occurred_at` must be RFC 3339 with an offset, `schema_version` the
integer 1. Unknown extra fields are ignored.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "ALL_TOPICS",
    "INPUT_MODELS",
    "MAX_SAFE_INTEGER",
    "MODELS",
    "OUTCOME_CATEGORY",
    "OUTPUT_MODELS",
    "Agency",
    "AgencyKind",
    "AidDecided",
    "AidKind",
    "AidReason",
    "AidRequested",
    "AidStatus",
    "BudgetSubmitted",
    "Candidate",
    "DeadLetter",
    "Decided",
    "DerogationSubmitted",
    "EnrollmentDecided",
    "EnrollmentReason",
    "EnrollmentStatus",
    "EnrollmentSubmitted",
    "Event",
    "ExitDecided",
    "ExitReason",
    "ExitStatus",
    "ExitSubmitted",
    "IsoDate",
    "Outcome",
    "OutcomeCategory",
    "Qualification",
    "ReferralDecided",
    "ReferralId",
    "ReferralReason",
    "ReferralStatus",
    "ReferralSubmitted",
    "SafeInt",
    "SchemaVersion",
    "Timestamp",
    "Topic",
    "event_key",
    "new_event_fields",
    "to_json_bytes",
]


# --- Topics -------------------------------------------------------------------------------


class Topic(StrEnum):
    """Every Kafka topic of the contract."""

    REFERRALS_SUBMITTED = "e2c.referrals.submitted.v1"
    REFERRALS_DECIDED = "e2c.referrals.decided.v1"
    DEROGATIONS_SUBMITTED = "e2c.derogations.submitted.v1"
    ENROLLMENTS_SUBMITTED = "e2c.enrollments.submitted.v1"
    ENROLLMENTS_DECIDED = "e2c.enrollments.decided.v1"
    AIDS_REQUESTED = "e2c.aids.requested.v1"
    AIDS_DECIDED = "e2c.aids.decided.v1"
    BUDGETS_SUBMITTED = "e2c.budgets.submitted.v1"
    EXITS_SUBMITTED = "e2c.exits.submitted.v1"
    EXITS_DECIDED = "e2c.exits.decided.v1"
    DEADLETTER = "e2c.deadletter.v1"


ALL_TOPICS: tuple[Topic, ...] = tuple(Topic)


# --- Enums --------------------------------------------------------------------------------


class AgencyKind(StrEnum):
    MISSION_LOCALE = "mission_locale"
    FRANCE_TRAVAIL = "france_travail"
    MLDS = "mlds"
    SPONTANEOUS = "spontaneous"
    OTHER = "other"


class Qualification(StrEnum):
    NONE = "none"
    DNB = "dnb"
    CAP_BEP = "cap_bep"
    BAC = "bac"
    POST_BAC = "post_bac"


class ReferralStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING_DEROGATION = "pending_derogation"
    DUPLICATE = "duplicate"
    EXPIRED = "expired"  # (1.1) accepted or pending, never enrolled in time


class ReferralReason(StrEnum):
    TOO_YOUNG = "too_young"
    NEEDS_DEROGATION = "needs_derogation"
    TOO_OLD = "too_old"
    HAS_QUALIFICATION = "has_qualification"
    IN_SCHOOL = "in_school"
    UNKNOWN_SCHOOL = "unknown_school"
    DEROGATION_REFUSED = "derogation_refused"
    NOT_PENDING = "not_pending"


class EnrollmentStatus(StrEnum):
    ENROLLED = "enrolled"
    REJECTED = "rejected"


class EnrollmentReason(StrEnum):
    """In the contract's order: the first that applies is the one given."""

    UNKNOWN_REFERRAL = "unknown_referral"
    REFERRAL_NOT_ACCEPTED = "referral_not_accepted"
    ALREADY_ENROLLED = "already_enrolled"


class AidKind(StrEnum):
    LAPTOP = "laptop"
    MEALS = "meals"
    CHILDCARE = "childcare"


class AidStatus(StrEnum):
    GRANTED = "granted"
    REJECTED = "rejected"


class AidReason(StrEnum):
    """In the contract's order: the first that applies is the one given."""

    INVALID_PERIOD = "invalid_period"
    INVALID_QUANTITY = "invalid_quantity"
    INVALID_AMOUNT = "invalid_amount"
    UNKNOWN_TRAINEE = "unknown_trainee"
    PERIOD_OUTSIDE_ENROLLMENT = "period_outside_enrollment"
    TRAINEE_EXITED = "trainee_exited"
    LAPTOP_ALREADY_GRANTED = "laptop_already_granted"
    TOO_MANY_MEALS = "too_many_meals"
    OVERLAPPING_PERIOD = "overlapping_period"
    OVER_CHILDCARE_CAP = "over_childcare_cap"
    BUDGET_EXHAUSTED = "budget_exhausted"


class Outcome(StrEnum):
    QUALIFYING_TRAINING = "qualifying_training"
    DURABLE_EMPLOYMENT = "durable_employment"
    SHORT_EMPLOYMENT = "short_employment"
    IAE = "iae"
    PRE_QUALIFYING_TRAINING = "pre_qualifying_training"
    CIVIC_SERVICE = "civic_service"
    NO_SOLUTION = "no_solution"
    DROPOUT = "dropout"
    OTHER = "other"


class OutcomeCategory(StrEnum):
    """A solution is any category but `none`."""

    TRAINING = "training"
    EMPLOYMENT = "employment"
    DYNAMIC = "dynamic"
    NONE = "none"


OUTCOME_CATEGORY: dict[Outcome, OutcomeCategory] = {
    Outcome.QUALIFYING_TRAINING: OutcomeCategory.TRAINING,
    Outcome.DURABLE_EMPLOYMENT: OutcomeCategory.EMPLOYMENT,
    Outcome.SHORT_EMPLOYMENT: OutcomeCategory.DYNAMIC,
    Outcome.IAE: OutcomeCategory.DYNAMIC,
    Outcome.PRE_QUALIFYING_TRAINING: OutcomeCategory.DYNAMIC,
    Outcome.CIVIC_SERVICE: OutcomeCategory.DYNAMIC,
    Outcome.NO_SOLUTION: OutcomeCategory.NONE,
    Outcome.DROPOUT: OutcomeCategory.NONE,
    Outcome.OTHER: OutcomeCategory.NONE,
}


class ExitStatus(StrEnum):
    RECORDED = "recorded"
    REJECTED = "rejected"


class ExitReason(StrEnum):
    """In the contract's order: the first that applies is the one given."""

    UNKNOWN_TRAINEE = "unknown_trainee"
    EXIT_BEFORE_ENROLLMENT = "exit_before_enrollment"
    ALREADY_EXITED = "already_exited"


# --- Field types --------------------------------------------------------------------------

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _check_date(value: Any) -> Any:
    """Only a `YYYY-MM-DD` string (or a `date` that is not a `datetime`) goes on to parsing."""
    if isinstance(value, datetime):
        raise PydanticCustomError("date_type", "Input should be a date, not a datetime")
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _DATE_RE.fullmatch(value):
        return value
    raise PydanticCustomError("date_type", "Input should be a date string YYYY-MM-DD")


def _check_datetime(value: Any) -> Any:
    """Only an RFC 3339 string with an offset (or a `datetime`) goes on to parsing."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _DATETIME_RE.fullmatch(value):
        return value
    raise PydanticCustomError(
        "datetime_type", "Input should be an RFC 3339 date-time with an offset"
    )


def _check_schema_version(value: Any) -> Any:
    """Only the JSON integer 1: not `"1"`, `1.0` or `true`."""
    if type(value) is not int:
        raise PydanticCustomError("int_type", "schema_version should be the integer 1")
    return value


IsoDate = Annotated[date, BeforeValidator(_check_date)]
"""A real calendar date, `YYYY-MM-DD` on the wire."""

Timestamp = Annotated[AwareDatetime, BeforeValidator(_check_datetime)]
"""An RFC 3339 date-time with an offset; naive date-times are invalid."""

SchemaVersion = Annotated[Literal[1], BeforeValidator(_check_schema_version)]

MAX_SAFE_INTEGER = 2**53 - 1
"""(1.1) The largest integer every JSON reader holds exactly; beyond it an integer is malformed."""

SafeInt = Annotated[StrictInt, Field(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
"""A JSON integer within ±(2^53 − 1): a larger one is a wrong type (dead letter), so that no
store ever sees a value it cannot hold."""

NonNegativeSafeInt = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]

ReferralId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
"""1 to 64 characters of `A-Za-z0-9._-`."""

NonEmptyStr = Annotated[str, Field(min_length=1)]


# --- Base models --------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Event(_Model):
    """Fields every event carries. Serialized `event_id` is a plain UUID string."""

    event_id: UUID
    occurred_at: Timestamp
    schema_version: SchemaVersion


class Decided(Event):
    """An answer to a `*.submitted` / `*.requested` input."""

    request_event_id: UUID


# --- Stage 1: referrals -------------------------------------------------------------------


class Agency(_Model):
    kind: AgencyKind
    id: str
    name: str


class Candidate(_Model):
    """The person referred. `email` and `phone` may be null or absent."""

    first_name: NonEmptyStr
    last_name: NonEmptyStr
    birth_date: IsoDate
    email: str | None = None
    phone: str | None = None
    highest_qualification: Qualification
    in_school: StrictBool
    has_work_experience: StrictBool
    rqth: StrictBool
    qpv_resident: StrictBool


class ReferralSubmitted(Event):
    """`e2c.referrals.submitted.v1`. `school_id` is checked by business rules, not here."""

    referral_id: ReferralId
    agency: Agency
    school_id: str
    candidate: Candidate


class ReferralDecided(Decided):
    """`e2c.referrals.decided.v1`, answering a referral or a derogation; (1.1) or telling
    that a referral expired, which answers no input: `request_event_id` null."""

    request_event_id: UUID | None  # type: ignore[assignment]
    referral_id: ReferralId
    agency_id: str
    school_id: str
    status: ReferralStatus
    reasons: list[ReferralReason] = Field(default_factory=list)
    trainee_id: str | None = None
    duplicate_of: str | None = None

    @model_validator(mode="after")
    def _null_request_only_for_expiry(self) -> ReferralDecided:
        # A re-sent referral_id of an expired referral is answered `expired` with its
        # request_event_id, so only the other way round is a rule.
        if self.request_event_id is None and self.status is not ReferralStatus.EXPIRED:
            raise ValueError("request_event_id may be null only when status is expired")
        return self


class DerogationSubmitted(Event):
    """`e2c.derogations.submitted.v1`."""

    referral_id: ReferralId
    granted: StrictBool
    decided_by: str


# --- Stage 2: enrollment ------------------------------------------------------------------


class EnrollmentSubmitted(Event):
    """`e2c.enrollments.submitted.v1`."""

    referral_id: ReferralId
    school_id: str
    enrolled_on: IsoDate


class EnrollmentDecided(Decided):
    """`e2c.enrollments.decided.v1`. On rejection the profile fields are null."""

    referral_id: ReferralId
    status: EnrollmentStatus
    reasons: list[EnrollmentReason] = Field(default_factory=list)
    trainee_id: str | None = None
    school_id: str | None = None
    enrolled_on: IsoDate | None = None
    agency_kind: AgencyKind | None = None
    age_at_entry: SafeInt | None = None
    rqth: StrictBool | None = None
    qpv_resident: StrictBool | None = None
    has_work_experience: StrictBool | None = None


# --- Stage 3: aid -------------------------------------------------------------------------


class AidRequested(Event):
    """`e2c.aids.requested.v1`.

    Quantity, amount and period are checked by business rules (`invalid_quantity`,
    `invalid_amount`, `invalid_period`), not here. A missing `amount_cents` reads as null.
    """

    request_id: NonEmptyStr
    trainee_id: str
    kind: AidKind
    quantity: SafeInt
    amount_cents: SafeInt | None = None
    period_start: IsoDate
    period_end: IsoDate


class BudgetSubmitted(Event):
    """`e2c.budgets.submitted.v1`: sets (or replaces) one kind's envelope for one year."""

    year: SafeInt
    kind: AidKind
    envelope_cents: NonNegativeSafeInt


class AidDecided(Decided):
    """`e2c.aids.decided.v1`. `school_id` is null when the trainee is unknown."""

    request_id: str
    trainee_id: str
    school_id: str | None = None
    kind: AidKind
    status: AidStatus
    reasons: list[AidReason] = Field(default_factory=list)
    quantity: SafeInt
    amount_cents: SafeInt | None = None
    period_start: IsoDate
    period_end: IsoDate


# --- Stage 4: exit ------------------------------------------------------------------------


class ExitSubmitted(Event):
    """`e2c.exits.submitted.v1`. A missing `satisfied` reads as null (did not answer)."""

    trainee_id: str
    exited_on: IsoDate
    outcome: Outcome
    satisfied: StrictBool | None = None


class ExitDecided(Decided):
    """`e2c.exits.decided.v1`. `school_id` is null when the trainee is unknown."""

    trainee_id: str
    school_id: str | None = None
    status: ExitStatus
    reasons: list[ExitReason] = Field(default_factory=list)
    outcome: Outcome
    category: OutcomeCategory
    exited_on: IsoDate


# --- Dead letters -------------------------------------------------------------------------


class DeadLetter(Event):
    """`e2c.deadletter.v1`: an unreadable input.

    (1.1) The original value is kept as text in `original` when it is UTF-8, else as
    `original_base64`; a letter never exceeds 512 KiB: a longer original is cut
    (`original_truncated`), and `original_bytes` and `original_sha256` describe the whole.
    """

    service: str
    source_topic: str
    partition: SafeInt
    offset: SafeInt
    error: str
    original: str | None
    original_base64: str | None = None
    original_truncated: StrictBool = False
    original_bytes: SafeInt | None = None
    original_sha256: str | None = None


# --- Registries and helpers ---------------------------------------------------------------

INPUT_MODELS: dict[str, type[Event]] = {
    Topic.REFERRALS_SUBMITTED: ReferralSubmitted,
    Topic.DEROGATIONS_SUBMITTED: DerogationSubmitted,
    Topic.ENROLLMENTS_SUBMITTED: EnrollmentSubmitted,
    Topic.AIDS_REQUESTED: AidRequested,
    Topic.BUDGETS_SUBMITTED: BudgetSubmitted,
    Topic.EXITS_SUBMITTED: ExitSubmitted,
}

OUTPUT_MODELS: dict[str, type[Event]] = {
    Topic.REFERRALS_DECIDED: ReferralDecided,
    Topic.ENROLLMENTS_DECIDED: EnrollmentDecided,
    Topic.AIDS_DECIDED: AidDecided,
    Topic.EXITS_DECIDED: ExitDecided,
    Topic.DEADLETTER: DeadLetter,
}

MODELS: dict[str, type[Event]] = {**INPUT_MODELS, **OUTPUT_MODELS}
"""Every topic's model."""


def new_event_fields() -> dict[str, Any]:
    """Fresh `event_id`, `occurred_at` (now, UTC) and `schema_version` for a new event."""
    return {"event_id": uuid4(), "occurred_at": datetime.now(UTC), "schema_version": 1}


def to_json_bytes(event: BaseModel) -> bytes:
    """The event as one UTF-8 JSON object, fields in contract order."""
    return event.model_dump_json().encode("utf-8")


def event_key(topic: str, event: Event) -> str | None:
    """The contract's Kafka key for `event` on `topic` (None for dead letters).

    The dead-letter writer passes the original message's key itself. Raises `TypeError`
    if `event` is not the model of `topic`.
    """
    model = MODELS[Topic(topic)]
    if not isinstance(event, model):
        raise TypeError(f"{type(event).__name__} is not a {model.__name__} ({topic})")
    if isinstance(
        event, ReferralSubmitted | ReferralDecided | DerogationSubmitted | EnrollmentSubmitted
    ):
        return event.referral_id
    if isinstance(event, EnrollmentDecided):
        return event.trainee_id or event.referral_id
    if isinstance(event, AidRequested | AidDecided | ExitSubmitted | ExitDecided):
        return event.trainee_id
    if isinstance(event, BudgetSubmitted):
        return f"{event.year}:{event.kind}"
    return None
