"""The broker's trust boundary: one SCRAM principal per role, each with only its ACLs.

The ACLs derive from the services' declarations (`deploy.system.TOPOLOGIES`): a service
reads its inputs with its own group and writes its outputs and the dead letters. The other
roles are the contract's outside writers and readers:

- `partner-<agency>`: writes `e2c.referrals.submitted.v1` only;
- `staff` (school staff tools): writes derogations, enrollments, aid requests and exits;
- `finance`: writes budgets, reads the aid decisions (groups `e2c-finance*`);
- `ops`: reads every topic and describes every group (lag, dead letters); writes the
  services' input topics, which only `e2c deadletters replay` does (a dead letter's source);
- `admin`: the broker's super user, for topics, users and ACLs (the stack and the CLI).

Users and ACLs go through confluent-kafka's admin client: aiokafka's has no such calls.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from pydantic import SecretStr

from deploy.local_kafka import LocalBrokers, run_sync
from deploy.system import BROKER_TOPICS, JOURNALS, TOPOLOGIES
from shared.contract import Topic
from shared.kafka import ensure_topics
from shared.kafka_access import KafkaAccess
from shared.private_files import read_secret, write_private

ADMIN = "admin"
STAFF = "staff"
FINANCE = "finance"
OPS = "ops"
PARTNER_PREFIX = "partner-"
SERVICE_ROLES = tuple(TOPOLOGIES)
FIXED_ROLES = (ADMIN, *SERVICE_ROLES, STAFF, FINANCE, OPS)
SCRAM_ITERATIONS = 8192
ADMIN_TIMEOUT_SECONDS = 30.0
_AGENCY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# The contract's outside writers, per role (every other topic is written by a service).
STAFF_TOPICS = (
    Topic.DEROGATIONS_SUBMITTED,
    Topic.ENROLLMENTS_SUBMITTED,
    Topic.AIDS_REQUESTED,
    Topic.EXITS_SUBMITTED,
)
FINANCE_WRITES = (Topic.BUDGETS_SUBMITTED,)
FINANCE_READS = (Topic.AIDS_DECIDED,)
PARTNER_TOPICS = (Topic.REFERRALS_SUBMITTED,)


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: `operation` on a topic, group or the cluster, by literal name or prefix."""

    resource: str  # "topic" | "group" | "cluster"
    name: str
    operation: str  # "read" | "write" | "describe"
    prefixed: bool = False

    def describe(self) -> str:
        name = f"{self.name}*" if self.prefixed else self.name
        return f"{self.operation} {self.resource} {name}"


def partner_principal(agency: str) -> str:
    if not _AGENCY.fullmatch(agency):
        raise ValueError("an agency id is 1-63 of a-z, 0-9, '-' and '_', starting with a "
                         "letter or digit")
    return f"{PARTNER_PREFIX}{agency}"


def grants(principal: str) -> list[Grant]:
    """What `principal` may do on the broker (nothing for an unknown name; the admin is a
    super user and needs no ACL)."""
    if principal in TOPOLOGIES:
        return _service_grants(principal)
    if principal.startswith(PARTNER_PREFIX):
        return _writes(PARTNER_TOPICS)
    if principal == STAFF:
        return _writes(STAFF_TOPICS)
    if principal == FINANCE:
        return [*_writes(FINANCE_WRITES), *_reads(FINANCE_READS),
                Grant("group", "e2c-finance", "read", prefixed=True)]
    if principal == OPS:
        return [
            Grant("topic", "e2c.", "read", prefixed=True),
            Grant("group", "e2c-", "describe", prefixed=True),
            *_writes(_dead_letter_sources()),
        ]
    return []


def _service_grants(name: str) -> list[Grant]:
    topology = TOPOLOGIES[name]
    replayed = tuple(topology.rebuild.replays) if topology.rebuild is not None else ()
    # Each service counts its own dead letters for `/ops/pipeline`: it reads them all.
    # Its journals it writes, and reads back (a restore does it as ops).
    reads = dict.fromkeys((*topology.inputs, *replayed, Topic.DEADLETTER, *topology.journals))
    return [
        *_reads(reads),
        Grant("group", topology.group_id, "read"),
        *_writes((*topology.outputs, *topology.journals)),
    ]


def _dead_letter_sources() -> list[Topic]:
    """The topics a dead letter can come from: every service's inputs."""
    return sorted({topic for topology in TOPOLOGIES.values() for topic in topology.inputs})


def _reads(topics: Iterable[str]) -> list[Grant]:
    return [Grant("topic", str(topic), "read") for topic in topics]


def _writes(topics: Iterable[str]) -> list[Grant]:
    return [Grant("topic", str(topic), "write") for topic in topics]


def acl_table() -> list[tuple[str, str]]:
    """(principal, grant) for every fixed role and a partner, as the README prints it."""
    rows = []
    for role in (*FIXED_ROLES, f"{PARTNER_PREFIX}<agency>"):
        if role == ADMIN:
            rows.append((role, "super user (topics, users, ACLs)"))
            continue
        rows.extend((role, grant.describe()) for grant in grants(role))
    return rows


def outside_writers(topic: Topic) -> list[str]:
    """The roles allowed to write `topic` besides the service that decides it (and ops,
    which only replays dead letters). Read from the grants alone: a topic a service also
    publishes (the referrals taken over HTTP) still has its outside writers."""
    return [role for role in (STAFF, FINANCE, f"{PARTNER_PREFIX}<agency>")
            if any(g.resource == "topic" and g.operation == "write" and g.name == topic
                   for g in grants(role))]


# --- credentials kept by the stack --------------------------------------------------------


class Credentials:
    """The principals' passwords, in a JSON file readable by its owner only. The broker
    keeps only salted SCRAM hashes; this file is how the stack's own clients log in."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = json.loads(read_secret(self.path))
        return {str(name): str(password) for name, password in data.items()}

    def ensure(self, names: Iterable[str]) -> dict[str, str]:
        """The passwords of `names`, generating (and saving) those not yet made."""
        known = self.load()
        missing = [name for name in names if name not in known]
        for name in missing:
            known[name] = new_password()
        if missing:
            self._save(known)
        return known

    def set(self, name: str, password: str) -> None:
        known = self.load()
        known[name] = password
        self._save(known)

    def remove(self, name: str) -> bool:
        known = self.load()
        found = known.pop(name, None) is not None
        if found:
            self._save(known)
        return found

    def password(self, name: str) -> str:
        known = self.load()
        if name not in known:
            raise KeyError(name)
        return known[name]

    def _save(self, known: dict[str, str]) -> None:
        write_private(self.path, json.dumps(known, indent=2, sort_keys=True) + "\n")


def new_password() -> str:
    return secrets.token_urlsafe(32)


def credentials_of(kafka: LocalBrokers) -> Credentials:
    """The stack's principals (but the admin, whose password the broker keeps itself)."""
    return Credentials(kafka.home / "principals.json")


def access(kafka: LocalBrokers, principal: str) -> KafkaAccess:
    """How `principal` connects to the stack's broker."""
    if principal == ADMIN:
        return kafka.admin_access()
    credentials = credentials_of(kafka)
    try:
        password = credentials.password(principal)
    except KeyError:
        raise KeyError(f"no Kafka credentials for {principal!r}: roles are "
                       f"{', '.join(FIXED_ROLES)} and the partners added") from None
    return KafkaAccess(bootstrap=kafka.bootstrap, username=principal,
                       password=SecretStr(password))


def provision(kafka: LocalBrokers, partitions: int) -> None:
    """Each role's user and ACLs, each known partner's, and every topic with its settings:
    the first start creates them, each later start puts them back as the code says."""
    passwords = credentials_of(kafka).ensure(role for role in FIXED_ROLES if role != ADMIN)
    BrokerSecurity(kafka.admin_access()).secure(passwords)
    # Also from a coroutine (`deploy.chaos` starts its environment in one), as LocalKafka's
    # own start does.
    run_sync(ensure_topics(kafka.admin_access(), BROKER_TOPICS, partitions, kafka.erasure,
                           JOURNALS, kafka.replication_factor))


def add_partner(kafka: LocalBrokers, agency: str) -> KafkaAccess:
    """A new password for the agency's principal (replacing any earlier one), its ACLs.

    The broker does not re-authenticate a live session (`connections.max.reauth.ms` is not
    set): a client still connected with an earlier password keeps writing as the principal.
    Only `remove_partner` (its ACLs gone) stops such a client."""
    principal = partner_principal(agency)
    password = new_password()
    security = BrokerSecurity(kafka.admin_access())
    security.upsert_user(principal, password)
    security.grant(principal, grants(principal))
    credentials_of(kafka).set(principal, password)
    return access(kafka, principal)


def ensure_partner(kafka: LocalBrokers, agency: str) -> KafkaAccess:
    """The agency's principal as it is, or a new one when the stack has none."""
    principal = partner_principal(agency)
    if principal in credentials_of(kafka).load():
        return access(kafka, principal)
    return add_partner(kafka, agency)


def remove_partner(kafka: LocalBrokers, agency: str) -> bool:
    """Revokes the agency's principal: its ACLs, its SCRAM user and its kept password."""
    principal = partner_principal(agency)
    security = BrokerSecurity(kafka.admin_access())
    # The ACLs first, and they are what matters to a client already connected: the broker
    # checks them on every request, while deleting the user only refuses new logins.
    security.revoke(principal)
    found = security.delete_user(principal)
    return credentials_of(kafka).remove(principal) or found


# --- the broker's side: users and ACLs ----------------------------------------------------


class BrokerSecurity:
    """Users and ACLs on a running broker, as its admin."""

    def __init__(self, admin: KafkaAccess) -> None:
        config = {**admin.librdkafka_config(), "socket.timeout.ms": 10000}
        self.client = AdminClient(config, logger=logging.getLogger("librdkafka"))

    def upsert_user(self, principal: str, password: str) -> None:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
        upsertion = UserScramCredentialUpsertion(principal, info, password.encode("utf-8"))
        _wait(self.client.alter_user_scram_credentials([upsertion]))

    def delete_user(self, principal: str) -> bool:
        deletion = UserScramCredentialDeletion(principal, ScramMechanism.SCRAM_SHA_512)
        try:
            _wait(self.client.alter_user_scram_credentials([deletion]))
        except KafkaException as error:
            if "RESOURCE_NOT_FOUND" in str(error) or "not found" in str(error).lower():
                return False
            raise
        return True

    def users(self) -> list[str]:
        described = self.client.describe_user_scram_credentials()
        result = described.result() if hasattr(described, "result") else _wait(described)
        return sorted(result)

    def grant(self, principal: str, wanted: Iterable[Grant]) -> None:
        """Makes `principal`'s ACLs exactly `wanted` (creating is idempotent; stale ones go)."""
        wanted = set(wanted)
        present = self.acls(principal)
        stale = [binding for grant, binding in present.items() if grant not in wanted]
        if stale:
            _wait(self.client.delete_acls([_filter_of(b) for b in stale]))
        new = [_binding(principal, grant) for grant in sorted(wanted - set(present))]
        if new:
            _wait(self.client.create_acls(new))

    def revoke(self, principal: str) -> None:
        everything = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{principal}", None,
            AclOperation.ANY, AclPermissionType.ANY,
        )
        _wait(self.client.delete_acls([everything]))

    def acls(self, principal: str) -> dict[Grant, AclBinding]:
        query = AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY, f"User:{principal}", None,
            AclOperation.ANY, AclPermissionType.ANY,
        )
        bindings = self.client.describe_acls(query, request_timeout=ADMIN_TIMEOUT_SECONDS)
        return {_grant_of(binding): binding for binding in bindings.result()}

    def secure(self, credentials: dict[str, str]) -> None:
        """Every fixed role's user and ACLs, and each known partner's (a start reconciles)."""
        for principal, password in credentials.items():
            if principal != ADMIN:
                self.upsert_user(principal, password)
                self.grant(principal, grants(principal))


_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
              "cluster": ResourceType.BROKER}
_OPERATIONS = {"read": AclOperation.READ, "write": AclOperation.WRITE,
               "describe": AclOperation.DESCRIBE}


def _binding(principal: str, grant: Grant) -> AclBinding:
    pattern = ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL
    return AclBinding(
        _RESOURCES[grant.resource], grant.name, pattern, f"User:{principal}", "*",
        _OPERATIONS[grant.operation], AclPermissionType.ALLOW,
    )


def _grant_of(binding: AclBinding) -> Grant:
    resource = {v: k for k, v in _RESOURCES.items()}.get(binding.restype, str(binding.restype))
    operation = {v: k for k, v in _OPERATIONS.items()}.get(binding.operation,
                                                            str(binding.operation))
    prefixed = binding.resource_pattern_type == ResourcePatternType.PREFIXED
    return Grant(resource, binding.name, operation, prefixed)


def _filter_of(binding: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(
        binding.restype, binding.name, binding.resource_pattern_type, binding.principal,
        binding.host, binding.operation, binding.permission_type,
    )


def _wait(futures: Any) -> Any:
    """Waits for every future of a confluent admin call; raises the first failure."""
    if isinstance(futures, dict):
        return {key: future.result(ADMIN_TIMEOUT_SECONDS) for key, future in futures.items()}
    return futures.result(ADMIN_TIMEOUT_SECONDS)


