"""The broker's trust boundary (deploy/kafka_security.py): the ACL table checked against a
list written here, independently of the topologies it is derived from."""

from __future__ import annotations

import pytest

from deploy import kafka_security
from deploy.kafka_security import ADMIN, FINANCE, OPS, STAFF, Grant
from shared.contract import ALL_TOPICS, Topic

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
# What the services consume (the topics a dead letter can come from, so ops may replay them).
SERVICE_INPUTS = {R_SUB, DEROG, E_SUB, X_DEC, A_REQ, BUDG, E_DEC, X_SUB, R_DEC, A_DEC}

# role: (topics it writes, topics it reads, groups it consumes in (a trailing * a prefix))
EXPECTED: dict[str, tuple[set[str], set[str], set[str]]] = {
    # referrals also publishes the referrals taken over HTTP
    "referrals": ({R_DEC, E_DEC, R_SUB, DEAD}, {R_SUB, DEROG, E_SUB, X_DEC, DEAD},
                  {"e2c-referrals"}),
    "aids": ({A_DEC, DEAD}, {A_REQ, BUDG, E_DEC, X_DEC, DEAD}, {"e2c-aids"}),
    # outcomes replays its own decisions when it rebuilds its view
    "outcomes": ({X_DEC, DEAD}, {X_SUB, R_DEC, E_DEC, A_DEC, X_DEC, DEAD}, {"e2c-outcomes"}),
    "staff": ({DEROG, E_SUB, A_REQ, X_SUB}, set(), set()),
    "finance": ({BUDG}, {A_DEC}, {"e2c-finance*"}),
    "ops": (SERVICE_INPUTS, EVERY_TOPIC, set()),
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
    assert {t for t in EVERY_TOPIC if allowed(role, "write", "topic", t)} == writes
    assert {t for t in EVERY_TOPIC if allowed(role, "read", "topic", t)} == reads
    granted_groups = {f"{g.name}*" if g.prefixed else g.name
                      for g in kafka_security.grants(role)
                      if g.resource == "group" and g.operation == "read"}
    assert granted_groups == groups
    # Nothing outside the contract's topics, and no cluster-wide right, to anyone.
    for grant in kafka_security.grants(role):
        assert grant.resource in {"topic", "group"}, grant
        assert grant.operation in {"read", "write", "describe"}, grant
        if grant.resource == "topic":
            assert grant.name in EVERY_TOPIC or (grant.prefixed and grant.name == "e2c."), grant


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
