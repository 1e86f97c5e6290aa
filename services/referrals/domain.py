"""Referral rules: eligibility, duplicates, derogations, enrollment, retention, and what a
partner's webhook receives (its body, its signature). No I/O."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

from pydantic import BaseModel

from shared.contract import (
    EnrollmentReason,
    Qualification,
    ReferralReason,
    ReferralStatus,
    Topic,
)

MIN_AGE = 16
DEROGATION_AGE = 26  # 26 to 29 need a derogation
MAX_AGE_WITH_DEROGATION = 29
QUALIFYING_DIPLOMAS = frozenset(
    {Qualification.CAP_BEP, Qualification.BAC, Qualification.POST_BAC}
)
# A person has a live referral while it is accepted or pending (enrolled ones are accepted)
# and not exited: a new referral of that person is then a duplicate.
LIVE_STATUSES = frozenset({ReferralStatus.ACCEPTED, ReferralStatus.PENDING_DEROGATION})
# (1.1) A live referral not enrolled in time expires; an expired one is settled like a refusal.
EXPIRABLE_STATUSES = LIVE_STATUSES
SETTLED_STATUSES = frozenset(
    {ReferralStatus.REJECTED, ReferralStatus.DUPLICATE, ReferralStatus.EXPIRED}
)
DAYS_PER_MONTH = 30  # a fraction of a retention month counts 30-day months (short test bounds)


@dataclass(frozen=True)
class Applicant:
    """The facts eligibility looks at."""

    birth_date: date
    highest_qualification: Qualification
    in_school: bool
    school_id: str


@dataclass(frozen=True)
class Decision:
    status: ReferralStatus
    reasons: tuple[ReferralReason, ...] = ()
    duplicate_of: str | None = None

    @property
    def gives_trainee(self) -> bool:
        return self.status is not ReferralStatus.REJECTED

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


def age_on(birth_date: date, day: date) -> int:
    """Age in completed years on `day` (born 29 February: a year older on 1 March)."""
    had_birthday = (day.month, day.day) >= (birth_date.month, birth_date.day)
    return day.year - birth_date.year - (0 if had_birthday else 1)


def person_key(first_name: str, last_name: str, birth_date: date) -> str:
    """Who the person is for duplicates: names without case, accents or spaces, and birth date."""
    return f"{_fold(first_name)}|{_fold(last_name)}|{birth_date.isoformat()}"


def _fold(name: str) -> str:
    if name.isascii():  # nothing to decompose, no accent to drop: the same result, faster
        return "".join(name.casefold().split())
    decomposed = unicodedata.normalize("NFKD", name)
    without_accents = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(without_accents.casefold().split())


def eligibility_reasons(
    applicant: Applicant, referral_date: date, known_schools: frozenset[str] | set[str]
) -> list[ReferralReason]:
    """Every failing rule, in the contract's order."""
    reasons: list[ReferralReason] = []
    age = age_on(applicant.birth_date, referral_date)
    if age < MIN_AGE:
        reasons.append(ReferralReason.TOO_YOUNG)
    elif DEROGATION_AGE <= age <= MAX_AGE_WITH_DEROGATION:
        reasons.append(ReferralReason.NEEDS_DEROGATION)
    elif age > MAX_AGE_WITH_DEROGATION:
        reasons.append(ReferralReason.TOO_OLD)
    if applicant.highest_qualification in QUALIFYING_DIPLOMAS:
        reasons.append(ReferralReason.HAS_QUALIFICATION)
    if applicant.in_school:
        reasons.append(ReferralReason.IN_SCHOOL)
    if applicant.school_id not in known_schools:
        reasons.append(ReferralReason.UNKNOWN_SCHOOL)
    return reasons


def decide_eligibility(
    applicant: Applicant, referral_date: date, known_schools: frozenset[str] | set[str]
) -> Decision:
    reasons = eligibility_reasons(applicant, referral_date, known_schools)
    if any(reason is not ReferralReason.NEEDS_DEROGATION for reason in reasons):
        status = ReferralStatus.REJECTED
    elif reasons:
        status = ReferralStatus.PENDING_DEROGATION
    else:
        status = ReferralStatus.ACCEPTED
    return Decision(status=status, reasons=tuple(reasons))


def decide_referral(
    applicant: Applicant,
    referral_date: date,
    known_schools: frozenset[str] | set[str],
    live_referral_of_person: str | None,
) -> Decision:
    """A person already followed is a duplicate, whatever the new referral says."""
    if live_referral_of_person is not None:
        return Decision(ReferralStatus.DUPLICATE, duplicate_of=live_referral_of_person)
    return decide_eligibility(applicant, referral_date, known_schools)


def decide_derogation(current: ReferralStatus, granted: bool) -> Decision:
    """The answer to a derogation; on a referral that is not pending nothing changes."""
    if current is not ReferralStatus.PENDING_DEROGATION:
        return Decision(ReferralStatus.REJECTED, (ReferralReason.NOT_PENDING,))
    if granted:
        return Decision(ReferralStatus.ACCEPTED)
    return Decision(ReferralStatus.REJECTED, (ReferralReason.DEROGATION_REFUSED,))


@dataclass(frozen=True)
class ReferralState:
    """What enrollment needs to know of a referral."""

    status: ReferralStatus
    enrolled: bool
    erased: bool


def enrollment_refusal(referral: ReferralState | None) -> EnrollmentReason | None:
    """The first reason that applies, or None when the enrollment is accepted."""
    if referral is None:
        return EnrollmentReason.UNKNOWN_REFERRAL
    if referral.status is not ReferralStatus.ACCEPTED or referral.erased:
        # An erased referral has no birth date left to compute the profile from.
        return EnrollmentReason.REFERRAL_NOT_ACCEPTED
    if referral.enrolled:
        return EnrollmentReason.ALREADY_ENROLLED
    return None


def months_before(moment: datetime, months: int) -> datetime:
    """`moment` shifted back by whole calendar months (day clamped to the month's length)."""
    month_index = moment.year * 12 + (moment.month - 1) - months
    year, month = divmod(month_index, 12)
    day = min(moment.day, _days_in_month(year, month + 1))
    return moment.replace(year=year, month=month + 1, day=day)


def _days_in_month(year: int, month: int) -> int:
    first_next = date(year + (month == 12), month % 12 + 1, 1)
    return (first_next - timedelta(days=1)).day


def retention_cutoff(reference: datetime, months: float) -> datetime:
    """`reference` less `months`: whole calendar months, then any fraction as 30-day months
    (so that a test or an operator can shorten a bound to seconds)."""
    whole = int(months)
    return months_before(reference, whole) - timedelta(days=(months - whole) * DAYS_PER_MONTH)


def due_for_erasure(
    status: ReferralStatus,
    settled_at: datetime,
    exited_on: date | None,
    cutoff: datetime,
    enrolled_at: datetime | None = None,
    enrolled_cutoff: datetime | None = None,
) -> bool:
    """Personal data goes once a referral was refused, a duplicate, expired or exited before
    `cutoff`, or (1.1) was enrolled before `enrolled_cutoff` and never exited. `settled_at`
    and `enrolled_at` are the service's own clock (when it decided, when it enrolled)."""
    if exited_on is not None:
        return exited_on < cutoff.date()
    if enrolled_at is not None:
        return enrolled_cutoff is not None and enrolled_at < enrolled_cutoff
    return status in SETTLED_STATUSES and settled_at < cutoff


def expires(status: ReferralStatus, enrolled: bool, decided_at: datetime,
            deadline: datetime) -> bool:
    """(1.1) An accepted or pending referral, not enrolled, decided (on the service's clock)
    before `deadline` (now less `E2C_REFERRAL_EXPIRY_DAYS`), expires."""
    return status in EXPIRABLE_STATUSES and not enrolled and decided_at < deadline


# --- Webhooks: the decisions pushed to an agency's callback URL ------------------------------


@dataclass(frozen=True)
class WebhookKind:
    """A decision an agency's webhook receives: the body's `type`, and the event's fields its
    `data` carries. Only pseudonymous decision fields: never names, birth date or contacts,
    nor the profile (age, RQTH...) an enrollment decision carries for the other services."""

    type: str
    fields: tuple[str, ...]


# Every decision about an agency's referrals, by the topic of the event that carries it.
# `referral.decided` covers accepted, rejected, pending_derogation, duplicate, the answers to
# derogations and contract 1.1's `expired` (a status of the same topic, `request_event_id`
# null: the README promised partners this shape). A new kind is one line here, plus
# `enqueue_webhook` where its event is emitted or learnt.
WEBHOOK_KINDS: dict[str, WebhookKind] = {
    Topic.REFERRALS_DECIDED: WebhookKind("referral.decided", (
        "request_event_id", "agency_id", "school_id", "status", "reasons", "trainee_id",
        "duplicate_of")),
    Topic.ENROLLMENTS_DECIDED: WebhookKind("enrollment.decided", (
        "request_event_id", "status", "reasons", "trainee_id", "school_id", "enrolled_on")),
    Topic.EXITS_DECIDED: WebhookKind("trainee.exited", (
        "trainee_id", "school_id", "exited_on", "outcome", "category")),
}

SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300  # how old a signed timestamp a partner should still accept
MAX_WEBHOOK_URL_LENGTH = 2000


def webhook_body(topic: str, event: BaseModel, referral_id: str) -> str:
    """The JSON a webhook receives for `event` (published on, or read from, `topic`):
    `event_id` is the decision event's own, so that a partner drops a repeated delivery."""
    kind = WEBHOOK_KINDS[topic]
    fields = event.model_dump(mode="json")
    body = {
        "event_id": fields["event_id"],
        "type": kind.type,
        "occurred_at": fields["occurred_at"],
        "referral_id": referral_id,
        "data": {name: fields.get(name) for name in kind.fields},
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """`E2C-Signature`: `v1=` and the hex HMAC-SHA256, keyed with the agency's secret, of
    `"{timestamp}.{body}"` (`timestamp` the `E2C-Timestamp` header, unix seconds)."""
    signed = str(timestamp).encode("ascii") + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_webhook(
    secret: str,
    timestamp_header: str,
    signature_header: str,
    body: bytes,
    now: float,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """What a partner checks: the signature matches (compared in constant time) and the
    timestamp is within `tolerance_seconds` of `now` (a replayed old request is refused)."""
    if not (timestamp_header.isascii() and timestamp_header.isdigit()):
        return False
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance_seconds:
        return False
    expected = webhook_signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, part.strip())
               for part in signature_header.split(","))


def webhook_url_problem(url: str) -> str | None:
    """Why `url` cannot be a callback URL (None when it can): an absolute http(s) URL with a
    host, no credentials in it, at most MAX_WEBHOOK_URL_LENGTH characters."""
    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        return f"the URL is longer than {MAX_WEBHOOK_URL_LENGTH} characters"
    if not url.isprintable() or any(char.isspace() for char in url):
        return "the URL holds spaces or control characters"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        return "the URL cannot be read"
    if parts.scheme.lower() not in ("http", "https"):
        return "the URL must start with http:// or https://"
    if not parts.hostname:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not hold credentials (the body is signed instead)"
    return None


def shown_url(url: str) -> str:
    """The URL as logs and listings show it: scheme, host, port and path, never its query
    string (it may hold a partner's token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    with contextlib.suppress(ValueError):  # a port that is not a number is left out
        if parts.port is not None:
            netloc += f":{parts.port}"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def retry_delay(failures: int, max_attempts: int, base_seconds: float,
                cap_seconds: float) -> float | None:
    """Seconds before the next try after `failures` failed tries (base, 2 × base, 4 × base...,
    at most `cap_seconds`); None once `max_attempts` tries failed: the delivery is parked."""
    if failures >= max_attempts:
        return None
    return float(min(base_seconds * 2.0 ** min(failures - 1, 64), cap_seconds))


# (1.1) The erasure journal: one record per erased referral (its key), compacted and kept, so
# that a store restored from a backup re-applies every erasure made since (`deploy.backup`).
ERASURE_JOURNAL = "e2c.referrals.erasures.v1"
RESTORE_REASON = "restore"  # the audit code of an erasure applied again at restore


def erasure_record(referral_id: str, erased_at: datetime, reason: str) -> str:
    """The journal's value: no personal data (an id, a UTC moment and a reason code)."""
    if erased_at.tzinfo is None:
        raise ValueError("naive datetimes are not journaled: give a time zone")
    return json.dumps({"referral_id": referral_id,
                       "erased_at": erased_at.astimezone(UTC).isoformat(), "reason": reason})
