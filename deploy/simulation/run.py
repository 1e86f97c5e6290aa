"""Publishes a planned year through the live pipeline, as partners and schools would, waits
for every answer, and compares the services' reports with the plan's own ground truth."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from deploy.kafka_security import OPS, access
from deploy.local_kafka import LocalKafka
from deploy.writers import Writers, writer_accesses
from shared.contract import AidKind, Topic
from shared.kafka import topic_partitions
from shared.kafka_access import KafkaAccess

from .plan import Aid, YearPlan

ANSWER_TOPICS = (Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED, Topic.AIDS_DECIDED,
                 Topic.EXITS_DECIDED)
Message = tuple[str, str | None, dict[str, Any]]  # topic, key, value


@dataclass
class Endpoints:
    writers: Mapping[str, KafkaAccess]  # topic -> the role that writes it (`deploy.writers`)
    reader: KafkaAccess  # reads the answers (ops)
    aids_url: str
    outcomes_url: str
    token: str

    @classmethod
    def of(cls, kafka: LocalKafka, aids_url: str, outcomes_url: str, token: str) -> Endpoints:
        """The stack's broker as the outside world uses it, and the services' URLs."""
        return cls(writer_accesses(kafka), access(kafka, OPS), aids_url, outcomes_url, token)


@dataclass
class Progress:
    """One line on stderr per phase, redrawn as answers come in (on a terminal; elsewhere
    only the finished line, so that logs stay readable)."""

    live: bool = True

    def show(self, phase: str, done: int, total: int) -> None:
        if not self.live and done < total:
            return
        width = 30
        filled = width * done // max(total, 1)
        bar = "#" * filled + "." * (width - filled)
        start = "\r" if self.live else ""
        sys.stderr.write(f"{start}  {phase:<12} [{bar}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class Answers:
    """Reads the decided topics from their current end and files answers by request."""

    def __init__(self, reader: KafkaAccess) -> None:
        self.reader = reader
        self.by_request: dict[str, dict[str, Any]] = {}
        self.event_ids: dict[str, set[str]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**self.reader.client_options(), group_id=None,
                                          enable_auto_commit=False)
        await self._consumer.start()
        partitions = await topic_partitions(self.reader, ANSWER_TOPICS)
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # settle the positions before anything is published
            await self._consumer.position(partition)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            body = json.loads(record.value)
            request = body.get("request_event_id")
            if request is not None:
                self.by_request.setdefault(request, body)
                self.event_ids.setdefault(request, set()).add(body["event_id"])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_for(self, event_ids: list[str], phase: str, progress: Progress,
                       timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = sum(event_id in self.by_request for event_id in event_ids)
            progress.show(phase, done, len(event_ids))
            if done == len(event_ids):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{phase}: {len(event_ids) - done} inputs never answered")
            await asyncio.sleep(0.25)


async def publish(
    writers: Mapping[str, KafkaAccess], messages: Iterable[Message], rate: float
) -> None:
    """Sends in order, each topic as its role; `rate` > 0 caps the events per second."""
    producer = Writers(writers, linger_ms=5, acks="all")
    await producer.start()
    try:
        started = time.monotonic()
        futures = []
        for count, (topic, key, value) in enumerate(messages, start=1):
            futures.append(await producer.send(
                topic, json.dumps(value).encode("utf-8"),
                key=key.encode("utf-8") if key is not None else None))
            if rate > 0:
                ahead = count / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _has_read(client: httpx.AsyncClient, service_url: str, topic: str) -> bool:
    """Whether the service's consumer group has read `topic` to its end (its lag there is 0,
    as `/ops/pipeline` reports it); False while the service cannot tell."""
    try:
        answer = await client.get(f"{service_url}/ops/pipeline", params={"limit": 0})
    except httpx.HTTPError:
        return False
    if answer.status_code != 200:
        return False
    rows = [row for row in answer.json().get("lag") or [] if row["topic"] == topic]
    return bool(rows) and all(row["lag"] == 0 for row in rows)


@dataclass
class Phase:
    name: str
    messages: Callable[[], list[Message]]


@dataclass
class Outcome:
    """What the run found: the answers, the reports' changes and every difference."""

    answers: dict[str, dict[str, Any]]
    decisions: Counter[str]
    finance_delta: dict[str, Any]
    outcomes_delta: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Simulation:
    def __init__(self, plan: YearPlan, endpoints: Endpoints, rate: float = 0,
                 progress: Progress | None = None, timeout: float = 600) -> None:
        self.plan = plan
        self.endpoints = endpoints
        self.rate = rate
        self.progress = progress or Progress()
        self.timeout = timeout
        self.answers = Answers(endpoints.reader)
        self.trainee_ids: dict[str, str] = {}

    async def run(self, before_reports: Callable[[], Awaitable[None]] | None = None) -> Outcome:
        """Every phase published and answered, then (after `before_reports`, e.g. the end of
        a fault injection) the reports compared with the plan."""
        started = time.monotonic()
        before = await self._reports()
        await self.answers.start()
        try:
            for phase in self._phases():
                messages = phase.messages()
                await publish(self.endpoints.writers, messages, self.rate)
                answered = [m[2]["event_id"] for m in messages
                            if m[0] != Topic.BUDGETS_SUBMITTED]
                await self.answers.wait_for(answered, phase.name, self.progress, self.timeout)
                self._learn_trainees()
                if phase.name == "enrollments":
                    await self._enrollments_known()
            if before_reports is not None:
                await before_reports()
            after = await self._settled_reports(before)
        finally:
            await self.answers.stop()
        outcome = Outcome(
            answers=self.answers.by_request,
            decisions=self._final_decisions(),
            finance_delta=delta(after[0], before[0]),
            outcomes_delta=delta(after[1], before[1]),
            seconds=time.monotonic() - started,
        )
        outcome.differences = self._compare(outcome)
        return outcome

    # --- what is sent ---------------------------------------------------------------------

    def _phases(self) -> list[Phase]:
        plan = self.plan
        return [
            Phase("referrals", lambda: [(Topic.REFERRALS_SUBMITTED, r.referral_id, r.event())
                                        for r in plan.referrals]),
            Phase("duplicates", lambda: [(Topic.REFERRALS_SUBMITTED, r.referral_id, r.event())
                                         for r in plan.duplicates]),
            Phase("derogations", self._derogations),
            Phase("enrollments", self._enrollments),
            Phase("aids", self._aids),
            Phase("exits", self._exits),
        ]

    def _derogations(self) -> list[Message]:
        return [(Topic.DEROGATIONS_SUBMITTED, r.referral_id, {
            "event_id": r.derogation_event_id, "occurred_at": _at(r.referred_on, 15),
            "schema_version": 1, "referral_id": r.referral_id,
            "granted": r.derogation_granted, "decided_by": "simulation",
        }) for r in self.plan.derogations]

    def _enrollments(self) -> list[Message]:
        return [(Topic.ENROLLMENTS_SUBMITTED, t.referral.referral_id, {
            "event_id": t.enrollment_event_id, "occurred_at": _at(t.enrolled_on, 9),
            "schema_version": 1, "referral_id": t.referral.referral_id,
            "school_id": t.referral.person.school_id, "enrolled_on": t.enrolled_on.isoformat(),
        }) for t in self.plan.trainees]

    def _aids(self) -> list[Message]:
        budgets: list[Message] = [(Topic.BUDGETS_SUBMITTED, f"{self.plan.year}:{kind.value}", {
            "event_id": _uuid(), "occurred_at": _at(self.plan.year_start, 8),
            "schema_version": 1, "year": self.plan.year, "kind": kind.value,
            "envelope_cents": cents,
        }) for kind, cents in self.plan.envelopes.items()]
        requests: list[Message] = []
        for trainee in self.plan.trainees:
            trainee_id = self.trainee_ids[trainee.referral.referral_id]
            requests.extend((Topic.AIDS_REQUESTED, trainee_id, aid.event(trainee_id))
                            for aid in trainee.aids)
        return budgets + requests

    def _exits(self) -> list[Message]:
        messages: list[Message] = []
        for trainee in self.plan.trainees:
            if trainee.exit is None:
                continue
            trainee_id = self.trainee_ids[trainee.referral.referral_id]
            messages.append((Topic.EXITS_SUBMITTED, trainee_id, {
                "event_id": trainee.exit.event_id, "occurred_at": _at(trainee.exit.exited_on, 17),
                "schema_version": 1, "trainee_id": trainee_id,
                "exited_on": trainee.exit.exited_on.isoformat(),
                "outcome": trainee.exit.outcome.value, "satisfied": trainee.exit.satisfied,
            }))
        return messages

    def _learn_trainees(self) -> None:
        for referral in self.plan.referrals:
            answer = self.answers.by_request.get(referral.event_id)
            if answer and answer.get("trainee_id"):
                self.trainee_ids[referral.referral_id] = answer["trainee_id"]

    # --- what comes back ------------------------------------------------------------------

    async def _reports(self) -> tuple[dict[str, Any], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.endpoints.token}"}
        year = self.plan.year
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            finance = await client.get(f"{self.endpoints.aids_url}/reports/finance?year={year}")
            outcomes = await client.get(
                f"{self.endpoints.outcomes_url}/reports/outcomes?year={year}")
        finance.raise_for_status()
        outcomes.raise_for_status()
        return finance.json(), outcomes.json()

    async def _settled_reports(
        self, before: tuple[dict[str, Any], dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Outcomes learns enrollments on its own consumer: wait until it has them all."""
        expected_entries = len(self.plan.trainees)
        deadline = time.monotonic() + 120
        while True:
            after = await self._reports()
            if after[1]["entries"] - before[1]["entries"] >= expected_entries:
                return after
            if time.monotonic() > deadline:
                return after
            await asyncio.sleep(0.5)

    async def _enrollments_known(self) -> None:
        """Waits until aids and outcomes have read every enrollment decision, as a school asks
        for aid or records an exit only after the enrollment: a request whose enrollment the
        service has not read yet is held, and refused once the hold is over (a few seconds in
        the test stack, when a loaded machine lets a consumer fall behind)."""
        deadline = time.monotonic() + self.timeout
        headers = {"Authorization": f"Bearer {self.endpoints.token}"}
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            for url in (self.endpoints.aids_url, self.endpoints.outcomes_url):
                while not await _has_read(client, url, Topic.ENROLLMENTS_DECIDED):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url} has not read every enrollment decision")
                    await asyncio.sleep(0.25)

    def _final_decisions(self) -> Counter[str]:
        final = Counter[str]()
        for referral in [*self.plan.referrals, *self.plan.duplicates]:
            answer = self.answers.by_request.get(referral.event_id, {})
            status = answer.get("status", "unanswered")
            if referral.derogation_granted is not None:
                derogation = self.answers.by_request.get(referral.derogation_event_id, {})
                status = derogation.get("status", status)
            final[status] += 1
        return final

    def _compare(self, outcome: Outcome) -> list[str]:
        differences = []
        expected_decisions = self.plan.expected_decisions()
        for status in sorted(set(expected_decisions) | set(outcome.decisions)):
            if expected_decisions[status] != outcome.decisions[status]:
                differences.append(f"referrals {status}: expected {expected_decisions[status]}, "
                                   f"got {outcome.decisions[status]}")
        wrong_reasons = [
            r.referral_id for r in [*self.plan.referrals, *self.plan.duplicates]
            if self.answers.by_request.get(r.event_id, {}).get("reasons") != r.expected_reasons
        ]
        if wrong_reasons:
            differences.append(f"{len(wrong_reasons)} referrals decided with other reasons "
                               f"than planned, e.g. {wrong_reasons[:3]}")
        wrong_aids = [
            aid.request_id for trainee in self.plan.trainees for aid in trainee.aids
            if not aid_answer_as_planned(aid, self.answers.by_request.get(aid.event_id, {}))
        ]
        if wrong_aids:
            differences.append(f"{len(wrong_aids)} aid requests decided otherwise than "
                               f"planned (status, reason or amount), e.g. {wrong_aids[:3]}")
        twice = [r for r, ids in self.answers.event_ids.items() if len(ids) > 1]
        if twice:
            differences.append(f"{len(twice)} inputs answered by more than one event")
        differences += compare(self.plan.expected_finance(), outcome.finance_delta, "finance")
        differences += compare(self.plan.expected_outcomes(), outcome.outcomes_delta, "outcomes")
        return differences


def aid_answer_as_planned(aid: Aid, answer: dict[str, Any]) -> bool:
    """The service's answer to one aid request is the plan's: granted for the planned amount
    (meals at the rate in force on period_start), or refused for the planned reason."""
    if aid.expected_reason is not None:
        return answer.get("status") == "rejected" and answer.get("reasons") == [
            aid.expected_reason]
    return answer.get("status") == "granted" and answer.get("amount_cents") == aid.granted_cents


def delta(after: Any, before: Any) -> Any:
    """after − before, leaf by leaf, over the numeric leaves of two reports."""
    if isinstance(after, dict):
        return {key: delta(value, (before or {}).get(key)) for key, value in after.items()}
    if isinstance(after, bool) or not isinstance(after, int):
        return after
    return after - (before if isinstance(before, int) and not isinstance(before, bool) else 0)


def compare(expected: Any, actual: Any, path: str) -> list[str]:
    """Every leaf of `expected` must equal the same leaf of `actual`."""
    if isinstance(expected, dict):
        found = actual if isinstance(actual, dict) else {}
        return [d for key, value in expected.items()
                for d in compare(value, found.get(key, 0), f"{path}.{key}")]
    return [] if expected == actual else [f"{path}: expected {expected}, got {actual}"]


def _at(day: Any, hour: int) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00+00:00"


def _uuid() -> str:
    return str(uuid.uuid4())


def side_by_side(plan: YearPlan, outcome: Outcome) -> str:
    """The figures a person checks first, generated vs reported."""
    finance, outcomes = plan.expected_finance(), plan.expected_outcomes()
    rows: list[tuple[str, Any, Any]] = []
    for status, count in sorted(plan.expected_decisions().items()):
        rows.append((f"referrals {status}", count, outcome.decisions[status]))
    for kind in AidKind:
        for name in ("granted", "rejected", "quantity", "amount_cents"):
            rows.append((f"{kind.value} {name}", finance["by_kind"][kind.value][name],
                         outcome.finance_delta["by_kind"][kind.value][name]))
    rows.append(("childcare trainees", finance["by_kind"]["childcare"]["trainees"],
                 outcome.finance_delta["by_kind"]["childcare"]["trainees"]))
    for name in ("accompanied", "entries", "exits", "solutions"):
        rows.append((name, outcomes[name], outcome.outcomes_delta[name]))
    for category, count in outcomes["exits_by_category"].items():
        reported = outcome.outcomes_delta["exits_by_category"][category]
        rows.append((f"exits {category}", count, reported))
    for name, count in outcomes["satisfaction"].items():
        rows.append((f"satisfaction {name}", count, outcome.outcomes_delta["satisfaction"][name]))
    for name, count in outcomes["profile"].items():
        rows.append((f"profile {name}", count, outcome.outcomes_delta["profile"][name]))
    lines = [f"{'figure':<32}{'generated':>14}{'reported':>14}"]
    for name, expected, actual in rows:
        mark = "" if expected == actual else "   <-- differs"
        lines.append(f"{name:<32}{expected:>14}{actual:>14}{mark}")
    return "\n".join(lines)
