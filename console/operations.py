"""The operations page's content from the services' `GET /ops/pipeline` answers (pure: no
I/O). First the banner, what a person on call must know in five seconds: green when nothing
is wrong, else red with each thing that is."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from console import formats
from shared.ops import HEARTBEAT_SECONDS, REDIS_DOWN

SERVICES = ("referrals", "aids", "outcomes")
SERVICE_LABELS = {"referrals": "Orientations", "aids": "Aides", "outcomes": "Résultats"}
PART_LABELS = {"lag": "retard", "outbox_backlog": "outbox", "outbox_parked": "outbox mise de côté",
               "held": "demandes en attente", "dead_letters": "lettres mortes",
               "heartbeats": "battements de cœur", "webhooks": "webhooks"}

# What turns the banner red.
LAG_ALERT = 100  # unread messages of one service, all its partitions together
OUTBOX_BACKLOG_ALERT = 100  # decisions written but not yet on the broker
DEAD_LETTER_WINDOW = timedelta(hours=24)  # a dead letter younger than this is news
HEARTBEAT_STALE_SECONDS = 2 * HEARTBEAT_SECONDS  # an instance beats every 5 s
DEAD_LETTER_LIMIT = 20  # letters asked of each service (its newest)
REFRESH_SECONDS = 15


@dataclass(frozen=True)
class Unanswered:
    """A service whose `/ops/pipeline` could not be read: its status, None if unreachable."""

    status: int | None


@dataclass
class Banner:
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class LagRow:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int


@dataclass
class LagTopic:
    """One input topic of a service: its partitions' lag, side by side."""

    topic: str
    short: str  # e2c.aids.requested.v1 -> aids.requested
    cells: list[LagRow | None]  # by partition number; None where it has no such partition
    total: int


@dataclass
class ServiceView:
    name: str
    label: str
    answered: bool
    lag: list[LagRow] = field(default_factory=list)
    lag_topics: list[LagTopic] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    lag_total: int | None = None
    outbox_backlog: int | None = None
    outbox_parked: int | None = None
    held: int | None = None
    last_processed: str = "–"
    dead_letters: int | None = None
    webhooks_parked: int | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class BeatRow:
    service: str
    label: str
    status: str  # up, down or REDIS_DOWN
    status_label: str
    instances: list[tuple[str, str, str]]  # instance, age, last processed age


@dataclass
class LetterRow:
    event_id: str | None
    service: str
    reason: str
    source_topic: str
    occurred_at: str  # ISO, as the letter holds it
    shown_at: str  # 02/12/2026 14:03:27, Paris
    where: str  # source partition and offset
    replayable: bool


@dataclass
class OperationsPage:
    updated_at: str
    banner: Banner
    services: list[ServiceView]
    heartbeats: list[BeatRow]
    letters: list[LetterRow]


Answer = dict[str, Any] | Unanswered


def operations_page(answers: dict[str, Answer], now: datetime,
                    limit: int = DEAD_LETTER_LIMIT) -> OperationsPage:
    pipelines = {name: answer for name, answer in answers.items() if isinstance(answer, dict)}
    letters = dead_letters(pipelines)
    return OperationsPage(
        updated_at=formats.clock(now),
        banner=banner(answers, now, limit),
        services=[service_view(name, answers[name]) for name in SERVICES if name in answers],
        heartbeats=heartbeat_rows(first_heartbeats(pipelines)),
        letters=letters,
    )


# --- the banner ---------------------------------------------------------------------------


def banner(answers: dict[str, Answer], now: datetime,
           limit: int = DEAD_LETTER_LIMIT) -> Banner:
    """Everything wrong, most urgent first: services not answering, parts unread, lag,
    outbox, dead letters, heartbeats."""
    problems: list[str] = []
    for name in SERVICES:
        answer = answers.get(name)
        if answer is None:
            continue
        if isinstance(answer, Unanswered):
            problems.append(unanswered_problem(name, answer))
        else:
            problems += pipeline_problems(name, answer)
    pipelines = {name: a for name, a in answers.items() if isinstance(a, dict)}
    problems += letter_problems(pipelines, now, limit)
    problems += heartbeat_problems(first_heartbeats(pipelines))
    return Banner(problems)


def unanswered_problem(name: str, answer: Unanswered) -> str:
    label = SERVICE_LABELS[name]
    if answer.status is None:
        return f"{label} ({name}) ne répond pas."
    return f"{label} ({name}) répond en erreur ({answer.status})."


def pipeline_problems(name: str, pipeline: dict[str, Any]) -> list[str]:
    label = f"{SERVICE_LABELS[name]} ({name})"
    problems = []
    errors = pipeline.get("errors") or {}
    if errors:
        parts = ", ".join(PART_LABELS.get(part, part) for part in sorted(errors))
        problems.append(f"{label} : lecture impossible ({parts}).")
    lag = pipeline.get("lag_total")
    if lag is not None and lag > LAG_ALERT:
        problems.append(f"{label} : {formats.integer(lag)} messages en retard "
                        f"(seuil {formats.integer(LAG_ALERT)}).")
    backlog = pipeline.get("outbox_backlog")
    if backlog is not None and backlog > OUTBOX_BACKLOG_ALERT:
        problems.append(f"{label} : {formats.integer(backlog)} messages en attente d'envoi "
                        f"(seuil {formats.integer(OUTBOX_BACKLOG_ALERT)}).")
    parked = (pipeline.get("outbox_parked") or {}).get("count") or 0
    if parked:
        problems.append(f"{label} : {formats.integer(parked)} messages refusés par le broker, "
                        "mis de côté (outbox).")
    webhooks = (pipeline.get("webhooks") or {}).get("parked") or 0
    if webhooks:
        problems.append(f"{label} : {formats.integer(webhooks)} livraisons de webhook "
                        "abandonnées.")
    return problems


def letter_problems(pipelines: dict[str, dict[str, Any]], now: datetime,
                    limit: int) -> list[str]:
    since = now - DEAD_LETTER_WINDOW
    problems = []
    for name in SERVICES:
        listed = ((pipelines.get(name) or {}).get("dead_letters") or {}).get("last") or []
        recent = [letter for letter in listed if _after(letter.get("occurred_at"), since)]
        if not recent:
            continue
        at_least = "au moins " if len(listed) >= limit > 0 and len(recent) == len(listed) else ""
        hours = int(DEAD_LETTER_WINDOW.total_seconds() // 3600)
        plural = "s" if len(recent) > 1 else ""
        problems.append(f"{SERVICE_LABELS[name]} ({name}) : {at_least}{len(recent)} lettre"
                        f"{plural} morte{plural} depuis {hours} h.")
    return problems


def heartbeat_problems(beats: list[dict[str, Any]]) -> list[str]:
    problems = []
    for beat in beats:
        name = str(beat.get("service"))
        label = f"{SERVICE_LABELS.get(name, name)} ({name})"
        status = beat.get("status")
        if status == REDIS_DOWN:
            return ["Battements de cœur illisibles : Redis ne répond pas."]
        if status != "up":
            problems.append(f"{label} : aucun battement de cœur, le service semble arrêté.")
            continue
        ages = [i["age_seconds"] for i in beat.get("instances") or []
                if i.get("age_seconds") is not None]
        if ages and max(ages) > HEARTBEAT_STALE_SECONDS:
            problems.append(f"{label} : dernier battement de cœur il y a "
                            f"{formats.seconds(max(ages))}.")
    return problems


def _after(text: object, since: datetime) -> bool:
    moment = _parsed(text)
    return moment is not None and moment >= since


def _parsed(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


# --- the tables ---------------------------------------------------------------------------


def service_view(name: str, answer: Answer) -> ServiceView:
    label = SERVICE_LABELS[name]
    if isinstance(answer, Unanswered):
        return ServiceView(name, label, answered=False, errors=[unanswered_problem(name, answer)])
    lag = [LagRow(row["topic"], row["partition"], row["committed"], row["end"], row["lag"])
           for row in answer.get("lag") or []]
    partitions = sorted({row.partition for row in lag})
    return ServiceView(
        name, label, answered=True, lag=lag, lag_topics=lag_topics(lag, partitions),
        partitions=partitions,
        lag_total=answer.get("lag_total"),
        outbox_backlog=answer.get("outbox_backlog"),
        outbox_parked=(answer.get("outbox_parked") or {}).get("count"),
        held=answer.get("held"),
        last_processed=formats.seconds(answer.get("last_processed_age_seconds")),
        dead_letters=(answer.get("dead_letters") or {}).get("count"),
        webhooks_parked=(answer.get("webhooks") or {}).get("parked"),
        errors=[f"{PART_LABELS.get(part, part)} : {error}"
                for part, error in sorted((answer.get("errors") or {}).items())],
    )


def lag_topics(lag: list[LagRow], partitions: list[int]) -> list[LagTopic]:
    topics: dict[str, dict[int, LagRow]] = {}
    for row in lag:
        topics.setdefault(row.topic, {})[row.partition] = row
    return [LagTopic(topic, short_topic(topic), [rows.get(p) for p in partitions],
                     sum(row.lag for row in rows.values()))
            for topic, rows in sorted(topics.items())]


def short_topic(topic: str) -> str:
    return topic.removeprefix("e2c.").removesuffix(".v1")


def first_heartbeats(pipelines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every service reads every heartbeat: the first answer that has them."""
    for name in SERVICES:
        beats = (pipelines.get(name) or {}).get("heartbeats")
        if beats:
            return list(beats)
    return []


STATUS_LABELS = {"up": "en marche", "down": "arrêté", REDIS_DOWN: "inconnu (Redis injoignable)"}


def heartbeat_rows(beats: list[dict[str, Any]]) -> list[BeatRow]:
    rows = []
    for beat in beats:
        name = str(beat.get("service"))
        status = str(beat.get("status"))
        rows.append(BeatRow(
            name, SERVICE_LABELS.get(name, name), status, STATUS_LABELS.get(status, status),
            [(str(i.get("instance")), formats.seconds(i.get("age_seconds")),
              formats.seconds(i.get("last_processed_age_seconds")))
             for i in beat.get("instances") or []],
        ))
    return rows


def dead_letters(pipelines: dict[str, dict[str, Any]]) -> list[LetterRow]:
    """Each service's newest letters, all together, newest first."""
    rows = []
    for name in SERVICES:
        for letter in ((pipelines.get(name) or {}).get("dead_letters") or {}).get("last") or []:
            rows.append(letter_row(name, letter))
    rows.sort(key=lambda row: _parsed(row.occurred_at) or datetime.min.replace(
        tzinfo=formats.PARIS), reverse=True)
    return rows


def letter_row(name: str, letter: dict[str, Any]) -> LetterRow:
    event_id = letter.get("event_id")
    source = letter.get("source_topic")
    partition, offset = letter.get("partition"), letter.get("offset")
    where = f"{partition} / {offset}" if partition is not None and offset is not None else "–"
    occurred = letter.get("occurred_at") if isinstance(letter.get("occurred_at"), str) else ""
    return LetterRow(
        event_id=str(event_id) if event_id is not None else None,
        service=str(letter.get("service") or name),
        reason=str(letter.get("error") or "–"),
        source_topic=str(source or "–"),
        occurred_at=occurred or "",
        shown_at=formats.moment(occurred),
        where=where,
        replayable=event_id is not None and bool(source)
        and not letter.get("original_truncated"),
    )
