"""The broker's trust boundary (deploy/kafka_security.py), proven through the real broker:
who may connect at all, which topics each role may write and read, which consumer groups it
may join, what a revoked partner can still do, and that a refused write leaves nothing a
service could see. The last tests check the ACL table itself against a list written here,
independently of the topologies it is derived from.

The broker's refusals, as aiokafka reports them:
- no SASL, or a wrong password: the producer's `start()` fails with `KafkaConnectionError`
  ("Unable to bootstrap"); underneath, the broker closes a connection whose first request is
  not SASL's, and a SCRAM exchange with a wrong password or an unknown user fails with
  `SaslAuthenticationFailed` (the same message for both: no user enumeration);
- a topic the principal may not write or read: `TopicAuthorizationFailedError` (it cannot
  even describe the topic, so nothing is produced);
- a group it may not use: `GroupAuthorizationFailedError` when the consumer starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import ConsumerRecord, RecordMetadata

from deploy import kafka_security
from deploy.kafka_security import ADMIN, FINANCE, OPS, STAFF, Grant
from shared.contract import ALL_TOPICS, Topic
from shared.kafka import topic_partitions
from shared.kafka_access import SCRAM_MECHANISM, KafkaAccess
from shared.settings import Settings
from tests.events import (
    aid_request,
    budget,
    derogation,
    enrollment,
    exit_submitted,
    new_id,
    referral,
)
from tests.infra import Publisher, TopicWatcher, learn_trainee

if TYPE_CHECKING:
    from deploy.harness import ServiceProcesses
    from deploy.local_kafka import LocalKafka

infra = pytest.mark.infra

# No refusal may hang a test: every client call is bounded by this.
TIMEOUT = 30.0
T = TypeVar("T")

REFERRALS_SUBMITTED = str(Topic.REFERRALS_SUBMITTED)
EXITS = str(Topic.EXITS_SUBMITTED)
BUDGETS = str(Topic.BUDGETS_SUBMITTED)


# --- helpers -------------------------------------------------------------------------------


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode("utf-8")


def unique_agency() -> str:
    return f"acl-{uuid.uuid4().hex[:12]}"


def host_port(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.rpartition(":")
    return host, int(port)


@contextlib.asynccontextmanager
async def producer(access: KafkaAccess) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(**access.client_options(), request_timeout_ms=15000)
    await bounded(client.start())
    try:
        yield client
    finally:
        await client.stop()


@contextlib.asynccontextmanager
async def consumer(
    access: KafkaAccess, *topics: str, group_id: str | None = None
) -> AsyncIterator[AIOKafkaConsumer]:
    client = AIOKafkaConsumer(*topics, **access.client_options(), group_id=group_id,
                              auto_offset_reset="earliest", request_timeout_ms=15000)
    try:
        await bounded(client.start())
        yield client
    finally:
        await client.stop()


async def start_refused(client: AIOKafkaProducer) -> KafkaConnectionError:
    """`client.start()` fails (aiokafka reports any failed bootstrap so)."""
    try:
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap") as caught:
            await bounded(client.start())
    finally:
        await client.stop()
    return caught.value


async def scram_handshake(kafka: LocalKafka, username: str, password: str) -> None:
    """One connection doing the SCRAM-SHA-512 exchange: it raises what the broker answered
    (aiokafka's clients log it and report only that they could not bootstrap)."""
    host, port = host_port(kafka.bootstrap)
    connection = await bounded(create_conn(
        host, port, security_protocol="SASL_PLAINTEXT", sasl_mechanism=SCRAM_MECHANISM,
        sasl_plain_username=username, sasl_plain_password=password,
    ))
    connection.close()


async def write_refused(client: AIOKafkaProducer, topic: str, event: dict[str, Any],
                        key: str) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await bounded(client.send_and_wait(topic, raw(event), key=key.encode()))


async def read_refused(access: KafkaAccess, topic: str) -> None:
    """Reading `topic` without a group is refused (when the consumer starts, or at its first
    fetch: aiokafka reports the refused metadata at either)."""
    with pytest.raises(TopicAuthorizationFailedError):
        async with consumer(access, topic) as reader:
            await bounded(reader.getone())


async def join_refused(access: KafkaAccess, topic: str, group_id: str) -> None:
    with pytest.raises(GroupAuthorizationFailedError):
        async with consumer(access, topic, group_id=group_id):
            pass


async def records_of(reader: KafkaAccess, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topic`'s log, each partition read from its start to its end."""
    partitions = await bounded(topic_partitions(reader, [topic]))
    assert partitions, f"{topic} has no partitions"
    async with consumer(reader) as client:
        client.assign(partitions)
        await client.seek_to_beginning(*partitions)
        ends = await bounded(client.end_offsets(partitions))
        records: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in partitions if await client.position(tp) < ends[tp]]:
            batch = await bounded(client.getmany(*partitions, timeout_ms=1000))
            for part in batch.values():
                records.extend(part)
        return records


async def first_record(
    reader: AIOKafkaConsumer, wanted: Callable[[bytes], bool]
) -> ConsumerRecord[bytes, bytes]:
    """The first record read whose value is `wanted` (TimeoutError after TIMEOUT)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            record = await reader.getone()
            if wanted(record.value or b""):
                return record


def carrying(records: list[ConsumerRecord[bytes, bytes]], event_id: str) -> list[Any]:
    return [record for record in records if event_id.encode() in (record.value or b"")]


# --- who may connect -----------------------------------------------------------------------


@infra
async def test_a_client_without_sasl_is_refused(kafka: LocalKafka) -> None:
    await start_refused(AIOKafkaProducer(bootstrap_servers=kafka.bootstrap,
                                         request_timeout_ms=15000))

    # Underneath: the broker answers the version probe, then closes the connection on the
    # first request that is not the SASL handshake.
    host, port = host_port(kafka.bootstrap)
    connection = await bounded(create_conn(host, port))
    try:
        with pytest.raises(KafkaConnectionError, match="closed"):
            await bounded(connection.send(MetadataRequest([])))
    finally:
        connection.close()

    # The same broker at the same address takes a role with its password.
    async with producer(kafka_security.access(kafka, STAFF)) as staff:
        assert await bounded(staff.partitions_for(EXITS))


@infra
async def test_a_wrong_password_or_an_unknown_user_is_refused(kafka: LocalKafka) -> None:
    staff = kafka_security.access(kafka, STAFF)
    wrong = {**staff.client_options(), "sasl_plain_password": "not-" + uuid.uuid4().hex}
    await start_refused(AIOKafkaProducer(**wrong, request_timeout_ms=15000))

    with pytest.raises(SaslAuthenticationFailed) as bad_password:
        await scram_handshake(kafka, STAFF, "not-" + uuid.uuid4().hex)
    with pytest.raises(SaslAuthenticationFailed) as unknown_user:
        await scram_handshake(kafka, f"nobody-{uuid.uuid4().hex[:8]}", "whatever")
    # The broker says the same to both: a client cannot tell which users exist.
    assert str(bad_password.value) == str(unknown_user.value)

    await scram_handshake(kafka, STAFF, staff.password.get_secret_value())  # the right one


@infra
async def test_provisioning_again_from_a_coroutine_keeps_every_role_working(
    kafka: LocalKafka,
) -> None:
    """What a restart does (`deploy.chaos` does it from a coroutine): users, ACLs and topics
    put back as the code says, the passwords unchanged."""
    kafka_security.provision(kafka, Settings().topic_partitions)  # inside the test's loop
    async with producer(kafka_security.access(kafka, STAFF)) as staff:
        assert await bounded(staff.partitions_for(EXITS))
    await read_refused(kafka_security.access(kafka, STAFF), EXITS)


# --- what a partner may do -----------------------------------------------------------------


@infra
async def test_a_partner_writes_referrals_only_and_its_refused_writes_reach_no_service(
    stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
) -> None:
    kafka = stack.kafka
    agency = unique_agency()
    partner = await asyncio.to_thread(kafka_security.add_partner, kafka, agency)
    try:
        # A trainee outcomes knows (an exit decided "recorded" shows it): its later exits are
        # decided as they are read, in the order of their partition (one key, one partition).
        trainee = await learn_trainee(publisher)
        first = exit_submitted(trainee)
        await publisher.send(EXITS, first, key=trainee)  # as staff
        [decided] = await watcher.wait_for(Topic.EXITS_DECIDED,
                                           request_event_id=first["event_id"])
        assert decided["status"] == "recorded"

        forged_exit = exit_submitted(trainee)
        forged_budget = budget("meals", 1, year=2091)
        async with producer(partner) as client:
            await write_refused(client, EXITS, forged_exit, key=trainee)
            await write_refused(client, BUDGETS, forged_budget, key="2091:meals")
            # The same client, connection and password may write its own topic.
            own = referral()
            written = await bounded(client.send_and_wait(
                REFERRALS_SUBMITTED, raw(own), key=own["referral_id"].encode()))
            assert isinstance(written, RecordMetadata)
        await watcher.wait_for(Topic.REFERRALS_DECIDED, referral_id=own["referral_id"])

        # Nor may it read the referrals (its own or other agencies'), nor join a group.
        await read_refused(partner, REFERRALS_SUBMITTED)
        await join_refused(partner, REFERRALS_SUBMITTED, "e2c-referrals")

        # The marker: a valid exit of the same trainee, after the refused one. Its decision
        # proves outcomes read past where the refused exit would be.
        marker = exit_submitted(trainee)
        await publisher.send(EXITS, marker, key=trainee)
        await watcher.wait_for(Topic.EXITS_DECIDED, request_event_id=marker["event_id"])
        assert watcher.find(Topic.EXITS_DECIDED, request_event_id=forged_exit["event_id"]) == []
        assert [letter for letter in watcher.find(Topic.DEADLETTER)
                if forged_exit["event_id"] in (letter.get("original") or "")] == []

        # And the logs themselves never held them.
        ops = kafka_security.access(kafka, OPS)
        exits = await records_of(ops, EXITS)
        assert carrying(exits, marker["event_id"]) and carrying(exits, first["event_id"])
        assert carrying(exits, forged_exit["event_id"]) == []
        assert carrying(await records_of(ops, BUDGETS), forged_budget["event_id"]) == []
    finally:
        await asyncio.to_thread(kafka_security.remove_partner, kafka, agency)


# --- what a service may do -----------------------------------------------------------------


@infra
async def test_a_service_keeps_to_its_own_group_and_writes_only_its_own_outputs(
    kafka: LocalKafka,
) -> None:
    aids = kafka_security.access(kafka, "aids")

    # Its own input, without a group: readable (the broker gives its offsets).
    async with consumer(aids) as reader:
        requested = TopicPartition(str(Topic.AIDS_REQUESTED), 0)
        reader.assign([requested])
        assert requested in await bounded(reader.end_offsets([requested]))
        await bounded(reader.getmany(requested, timeout_ms=500))  # no refusal

    # Another service's group, even on a topic aids may read: refused before joining, so
    # the running services' groups never see it.
    for group in ("e2c-referrals", "e2c-outcomes"):
        await join_refused(aids, str(Topic.AIDS_REQUESTED), group)

    # Another service's input (personal data of the referrals): refused.
    await read_refused(aids, REFERRALS_SUBMITTED)

    # Another service's outputs, and what the outside world submits: refused.
    trainee = f"T-acl-{uuid.uuid4().hex[:10]}"
    async with producer(aids) as client:
        await write_refused(client, str(Topic.REFERRALS_DECIDED), referral(),
                            key=f"R-{trainee}")
        await write_refused(client, str(Topic.EXITS_DECIDED), exit_submitted(trainee),
                            key=trainee)
        await write_refused(client, str(Topic.AIDS_REQUESTED), aid_request(trainee, "meals"),
                            key=trainee)


# --- revoking a partner --------------------------------------------------------------------


@infra
async def test_a_removed_partner_is_refused_its_next_write_and_its_password(
    stack: ServiceProcesses, watcher: TopicWatcher,
) -> None:
    kafka = stack.kafka
    agency = unique_agency()
    partner = await asyncio.to_thread(kafka_security.add_partner, kafka, agency)
    password = partner.password.get_secret_value()
    before, after = referral(), referral()

    async with producer(partner) as client:
        await bounded(client.send_and_wait(REFERRALS_SUBMITTED, raw(before),
                                           key=before["referral_id"].encode()))
        await watcher.wait_for(Topic.REFERRALS_DECIDED, referral_id=before["referral_id"])

        assert await asyncio.to_thread(kafka_security.remove_partner, kafka, agency)

        # The broker keeps the authenticated connection (Kafka does not re-authenticate a
        # session unless `connections.max.reauth.ms` is set): what stops the very next write
        # is the ACLs' removal, checked on each request.
        await write_refused(client, REFERRALS_SUBMITTED, after, key=after["referral_id"])

    # A new connection with the old password: its user is gone.
    with pytest.raises(SaslAuthenticationFailed):
        await scram_handshake(kafka, partner.username, password)
    await start_refused(AIOKafkaProducer(**partner.client_options(), request_timeout_ms=15000))
    with pytest.raises(KeyError):
        kafka_security.access(kafka, partner.username)  # the stack forgot its password too

    records = await records_of(kafka_security.access(kafka, OPS), REFERRALS_SUBMITTED)
    assert carrying(records, before["event_id"])
    assert carrying(records, after["event_id"]) == []


# --- staff, finance, ops -------------------------------------------------------------------


@infra
async def test_staff_write_their_four_topics_and_each_is_decided(
    stack: ServiceProcesses, watcher: TopicWatcher,
) -> None:
    staff = kafka_security.access(stack.kafka, STAFF)
    trainee = f"T-acl-{uuid.uuid4().hex[:10]}"  # unknown: held, then refused
    referral_id = f"ML-ACL-{uuid.uuid4().hex[:12]}"  # unknown: not pending
    sent = {
        Topic.DEROGATIONS_SUBMITTED: (derogation(referral_id), referral_id,
                                      Topic.REFERRALS_DECIDED),
        Topic.ENROLLMENTS_SUBMITTED: (enrollment(referral_id), referral_id,
                                      Topic.ENROLLMENTS_DECIDED),
        Topic.AIDS_REQUESTED: (aid_request(trainee, "meals"), trainee, Topic.AIDS_DECIDED),
        Topic.EXITS_SUBMITTED: (exit_submitted(trainee), trainee, Topic.EXITS_DECIDED),
    }
    assert set(sent) == set(kafka_security.STAFF_TOPICS)
    async with producer(staff) as client:
        for topic, (event, key, _) in sent.items():
            written = await bounded(client.send_and_wait(str(topic), raw(event),
                                                         key=key.encode()))
            assert isinstance(written, RecordMetadata)
        await write_refused(client, BUDGETS, budget("meals", 1, year=2092), key="2092:meals")

    await asyncio.gather(*(watcher.wait_for(decisions, request_event_id=event["event_id"])
                           for event, _, decisions in sent.values()))
    await read_refused(staff, str(Topic.EXITS_DECIDED))  # staff write, they do not read


@infra
async def test_finance_sets_budgets_and_reads_aid_decisions_only(
    stack: ServiceProcesses, publisher: Publisher,
) -> None:
    finance = kafka_security.access(stack.kafka, FINANCE)
    year = 2093
    async with producer(finance) as client:
        envelope = budget("meals", 1_000_000, year=year)
        written = await bounded(client.send_and_wait(BUDGETS, raw(envelope),
                                                     key=f"{year}:meals".encode()))
        assert isinstance(written, RecordMetadata)
        trainee = f"T-acl-{uuid.uuid4().hex[:10]}"
        await write_refused(client, EXITS, exit_submitted(trainee), key=trainee)

    # An aid decision to read (an unknown trainee's request: held, then refused), read in a
    # group of finance's own.
    request = aid_request(trainee, "meals")
    await publisher.send(str(Topic.AIDS_REQUESTED), request, key=trainee)  # as staff
    group = f"e2c-finance-acl-{uuid.uuid4().hex[:8]}"
    async with consumer(finance, str(Topic.AIDS_DECIDED), group_id=group) as reader:
        await first_record(reader, lambda value: request["event_id"].encode() in value)
        await bounded(reader.commit())  # the group is finance's: it keeps its offsets

    await join_refused(finance, str(Topic.AIDS_DECIDED), "e2c-aids")
    await read_refused(finance, str(Topic.EXITS_DECIDED))


@infra
async def test_ops_reads_the_dead_letters_but_cannot_forge_one_nor_join_a_service(
    stack: ServiceProcesses,
) -> None:
    ops = kafka_security.access(stack.kafka, OPS)
    unreadable = json.dumps({"not": "an exit", "marker": new_id()}).encode()
    async with producer(kafka_security.access(stack.kafka, STAFF)) as staff:
        written = await bounded(staff.send_and_wait(EXITS, unreadable, key=b"T-acl-bad"))

    async with consumer(ops, str(Topic.DEADLETTER)) as reader:
        record = await first_record(
            reader, lambda value: json.loads(value).get("original") == unreadable.decode())
    letter = json.loads(record.value or b"{}")
    assert (letter["service"], letter["source_topic"]) == ("outcomes", EXITS)
    assert (letter["partition"], letter["offset"]) == (written.partition, written.offset)

    async with producer(ops) as client:
        await write_refused(client, str(Topic.DEADLETTER), letter, key="T-acl-bad")
    await join_refused(ops, EXITS, "e2c-outcomes")  # it describes the groups, no more


# --- the ACL table, against an independent list ----------------------------------------------

R_SUB = "e2c.referrals.submitted.v1"
R_DEC = "e2c.referrals.decided.v1"
DEROG = "e2c.derogations.submitted.v1"
E_SUB = "e2c.enrollments.submitted.v1"
E_DEC = "e2c.enrollments.decided.v1"
A_REQ = "e2c.aids.requested.v1"
A_DEC = "e2c.aids.decided.v1"
BUDG = "e2c.budgets.submitted.v1"
X_SUB = "e2c.exits.submitted.v1"
X_DEC = "e2c.exits.decided.v1"
DEAD = "e2c.deadletter.v1"
EVERY_TOPIC = {R_SUB, R_DEC, DEROG, E_SUB, E_DEC, A_REQ, A_DEC, BUDG, X_SUB, X_DEC, DEAD}
# Internal (no contract): the referrals service's erasure journal, read back at restore.
ERASURES = "e2c.referrals.erasures.v1"
EVERY_BROKER_TOPIC = EVERY_TOPIC | {ERASURES}
# What the services consume (the topics a dead letter can come from, so ops may replay them).
SERVICE_INPUTS = {R_SUB, DEROG, E_SUB, X_DEC, A_REQ, BUDG, E_DEC, X_SUB, R_DEC, A_DEC}

# role: (topics it writes, topics it reads, groups it consumes in (a trailing * a prefix))
EXPECTED: dict[str, tuple[set[str], set[str], set[str]]] = {
    # referrals also publishes the referrals taken over HTTP
    "referrals": ({R_DEC, E_DEC, R_SUB, DEAD, ERASURES},
                  {R_SUB, DEROG, E_SUB, X_DEC, DEAD, ERASURES}, {"e2c-referrals"}),
    "aids": ({A_DEC, DEAD}, {A_REQ, BUDG, E_DEC, X_DEC, DEAD}, {"e2c-aids"}),
    # outcomes replays its own decisions when it rebuilds its view
    "outcomes": ({X_DEC, DEAD}, {X_SUB, R_DEC, E_DEC, A_DEC, X_DEC, DEAD}, {"e2c-outcomes"}),
    "staff": ({DEROG, E_SUB, A_REQ, X_SUB}, set(), set()),
    "finance": ({BUDG}, {A_DEC}, {"e2c-finance*"}),
    "ops": (SERVICE_INPUTS, EVERY_BROKER_TOPIC, set()),
    "partner-ml-toulouse": ({R_SUB}, set(), set()),
    "partner-another_agency-2": ({R_SUB}, set(), set()),
}


def _covers(grant: Grant, resource: str, name: str) -> bool:
    if grant.resource != resource:
        return False
    return name.startswith(grant.name) if grant.prefixed else name == grant.name


def allowed(principal: str, operation: str, resource: str, name: str) -> bool:
    """Whether the broker would let `principal` do it, from its ALLOW grants (StandardAuthorizer:
    READ and WRITE imply DESCRIBE; nothing else is implied)."""
    implied = {"read": {"read"}, "write": {"write"}, "describe": {"read", "write", "describe"}}
    return any(_covers(grant, resource, name) and grant.operation in implied[operation]
               for grant in kafka_security.grants(principal))


def test_the_independent_list_names_every_contract_topic() -> None:
    assert {str(topic) for topic in ALL_TOPICS} == EVERY_TOPIC


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_role_writes_and_reads_exactly_its_topics(role: str) -> None:
    writes, reads, groups = EXPECTED[role]
    assert {t for t in EVERY_BROKER_TOPIC if allowed(role, "write", "topic", t)} == writes
    assert {t for t in EVERY_BROKER_TOPIC if allowed(role, "read", "topic", t)} == reads
    granted_groups = {f"{g.name}*" if g.prefixed else g.name
                      for g in kafka_security.grants(role)
                      if g.resource == "group" and g.operation == "read"}
    assert granted_groups == groups
    # Nothing outside the broker's topics, and no cluster-wide right, to anyone.
    for grant in kafka_security.grants(role):
        assert grant.resource in {"topic", "group"}, grant
        assert grant.operation in {"read", "write", "describe"}, grant
        if grant.resource == "topic":
            assert grant.name in EVERY_BROKER_TOPIC or (grant.prefixed
                                                        and grant.name == "e2c."), grant


def test_a_service_group_is_joined_by_its_service_only() -> None:
    service_groups = ["e2c-referrals", "e2c-aids", "e2c-outcomes"]
    for group in service_groups:
        joiners = [role for role in EXPECTED if allowed(role, "read", "group", group)]
        assert joiners == [group.removeprefix("e2c-")]
    assert not allowed(FINANCE, "read", "group", "e2c-aids")
    assert allowed(FINANCE, "read", "group", "e2c-finance-report")
    # ops sees every group's offsets (lag) without being able to join one
    assert all(allowed(OPS, "describe", "group", g) and not allowed(OPS, "read", "group", g)
               for g in service_groups)


def test_every_contract_topic_has_a_writer_and_a_reader_besides_ops() -> None:
    roles = [role for role in EXPECTED if role != OPS]
    for topic in ALL_TOPICS:
        writers = [r for r in roles if allowed(r, "write", "topic", str(topic))]
        readers = [r for r in roles if allowed(r, "read", "topic", str(topic))]
        assert writers, f"nobody writes {topic}"
        assert readers, f"nobody reads {topic}"
    # The decisions have one writer each: the service that decides them.
    for topic, service in ((R_DEC, "referrals"), (A_DEC, "aids"), (X_DEC, "outcomes")):
        assert [r for r in roles if allowed(r, "write", "topic", topic)] == [service]


def test_the_admin_and_unknown_principals_get_no_acl() -> None:
    # The admin is a super user (no ACL needed); anyone else unknown gets nothing.
    assert kafka_security.grants(ADMIN) == []
    assert kafka_security.grants("stranger") == []
    assert kafka_security.grants("partners") == []  # not "partner-<agency>"
    for bad in ("", "-leading-dash", "UPPER", "a" * 64, "white space", "dot.ted"):
        with pytest.raises(ValueError):
            kafka_security.partner_principal(bad)


def test_the_acl_table_lists_each_role_with_its_grants() -> None:
    table = kafka_security.acl_table()
    assert (ADMIN, "super user (topics, users, ACLs)") in table
    by_role: dict[str, set[str]] = {}
    for role, grant in table:
        by_role.setdefault(role, set()).add(grant)
    assert set(by_role) == {ADMIN, "referrals", "aids", "outcomes", STAFF, FINANCE, OPS,
                            "partner-<agency>"}
    assert by_role["partner-<agency>"] == {f"write topic {R_SUB}"}
    assert by_role[STAFF] == {f"write topic {t}" for t in (DEROG, E_SUB, A_REQ, X_SUB)}
    assert by_role[FINANCE] == {f"write topic {BUDG}", f"read topic {A_DEC}",
                                "read group e2c-finance*"}
    assert "read topic e2c.*" in by_role[OPS] and "describe group e2c-*" in by_role[OPS]
    assert f"write topic {DEAD}" not in by_role[OPS]  # ops replays letters, never writes one
    for service in ("referrals", "aids", "outcomes"):
        assert f"read group e2c-{service}" in by_role[service]
        assert f"write topic {DEAD}" in by_role[service]


def test_outside_writers_names_who_submits_each_topic() -> None:
    assert kafka_security.outside_writers(Topic.REFERRALS_SUBMITTED) == ["partner-<agency>"]
    assert kafka_security.outside_writers(Topic.BUDGETS_SUBMITTED) == [FINANCE]
    for topic in (Topic.DEROGATIONS_SUBMITTED, Topic.ENROLLMENTS_SUBMITTED,
                  Topic.AIDS_REQUESTED, Topic.EXITS_SUBMITTED):
        assert kafka_security.outside_writers(topic) == [STAFF]
    for topic in (Topic.REFERRALS_DECIDED, Topic.ENROLLMENTS_DECIDED, Topic.AIDS_DECIDED,
                  Topic.EXITS_DECIDED, Topic.DEADLETTER):
        assert kafka_security.outside_writers(topic) == []
