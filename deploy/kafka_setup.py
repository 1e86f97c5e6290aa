"""The compose stack's broker setup: what the one-shot `kafka-setup` service runs.

    python -m deploy.kafka_setup provision               # at every `docker compose up`
    python -m deploy.kafka_setup partner-add AGENCY      # prints the partner's password once
    python -m deploy.kafka_setup partner-remove AGENCY

It connects as the broker's admin with the usual settings (`KAFKA_BOOTSTRAP_SERVERS`,
`E2C_KAFKA_USERNAME=admin`, `E2C_KAFKA_PASSWORD`, `E2C_KAFKA_SECURITY_PROTOCOL`,
`E2C_KAFKA_SSL_CAFILE`: shared/settings.py) and applies the same roles and ACLs as the local
stack (`deploy.kafka_security`). Unlike the local stack, it makes and keeps no password: each
role's is the operator's, in `E2C_KAFKA_PASSWORD_<ROLE>`. The services' are required; a role
of the others (staff, finance, ops) without one has no user, and a user made for it earlier
is removed with its ACLs. A partner's password is made by `partner-add` and printed once: the
broker keeps only its salted hash.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence

from pydantic import SecretStr

from deploy.kafka_security import (
    ADMIN,
    FINANCE,
    OPS,
    PARTNER_PREFIX,
    SERVICE_ROLES,
    STAFF,
    BrokerSecurity,
    grants,
    new_password,
    partner_principal,
)
from deploy.system import BROKER_TOPICS, JOURNALS
from shared.erasure import ErasureBound
from shared.kafka import ensure_topics
from shared.kafka_access import KafkaAccess
from shared.settings import Settings

PASSWORD_PREFIX = "E2C_KAFKA_PASSWORD_"
EXTERNAL_BOOTSTRAP = "E2C_KAFKA_EXTERNAL_BOOTSTRAP"  # what a partner is told to connect to
REQUIRED_ROLES = SERVICE_ROLES
OPTIONAL_ROLES = (STAFF, FINANCE, OPS)
# What the compose file and the broker's JAAS settings can carry without quoting.
_PASSWORD = re.compile(r"^[A-Za-z0-9_-]{32,}$")
Say = Callable[[str], None]


class SetupError(Exception):
    """A setting the operator must fix (its value is never shown)."""


def password_variable(role: str) -> str:
    return f"{PASSWORD_PREFIX}{role.upper()}"


def check_password(variable: str, value: str) -> str:
    if not _PASSWORD.fullmatch(value):
        raise SetupError(
            f"{variable}: 32 or more letters, digits, '-' or '_' "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def role_passwords(env: Mapping[str, str]) -> dict[str, str | None]:
    """Each role's password from `env`; None for an optional role that has none."""
    passwords: dict[str, str | None] = {}
    for role in (*REQUIRED_ROLES, *OPTIONAL_ROLES):
        variable = password_variable(role)
        value = env.get(variable, "")
        if not value and role in REQUIRED_ROLES:
            raise SetupError(f"{variable} is not set (the {role} service's Kafka password)")
        passwords[role] = check_password(variable, value) if value else None
    return passwords


def admin_access(settings: Settings) -> KafkaAccess:
    if settings.kafka_username != ADMIN or settings.kafka_password is None:
        raise SetupError("E2C_KAFKA_USERNAME=admin and E2C_KAFKA_PASSWORD (the broker's "
                         "admin password, KAFKA_ADMIN_PASSWORD in docker-compose.yml) are needed")
    check_password("E2C_KAFKA_PASSWORD", settings.kafka_password.get_secret_value())
    return settings.kafka_access()


def provision(
    admin: KafkaAccess, passwords: Mapping[str, str | None], partitions: int, say: Say = print,
    bound: ErasureBound | None = None,
) -> None:
    """Every role's user and ACLs as `passwords` says, each partner's ACLs as the code says,
    and every topic with its settings (a later run puts them back; nothing else changes)."""
    security = BrokerSecurity(admin)
    existing = set(security.users())
    for role, password in passwords.items():
        if password is None:
            security.revoke(role)
            if role in existing:
                security.delete_user(role)
                say(f"{role:<10} no {password_variable(role)}: its user and ACLs are removed")
            continue
        wanted = grants(role)
        security.upsert_user(role, password)
        security.grant(role, wanted)
        say(f"{role:<10} SCRAM-SHA-512 user, {len(wanted)} ACLs")
    partners = sorted(user for user in existing if user.startswith(PARTNER_PREFIX))
    for partner in partners:
        security.grant(partner, grants(partner))
    if partners:
        say(f"partners   {len(partners)}, their ACLs checked")
    asyncio.run(ensure_topics(admin, BROKER_TOPICS, partitions, bound, JOURNALS))
    say(f"topics     {len(BROKER_TOPICS)}, {partitions} partitions when created")


def add_partner(admin: KafkaAccess, agency: str, bootstrap: str) -> KafkaAccess:
    """A new password for the agency's principal (replacing any earlier one), its ACLs."""
    principal = partner_principal(agency)
    password = new_password()
    security = BrokerSecurity(admin)
    security.upsert_user(principal, password)
    security.grant(principal, grants(principal))
    return KafkaAccess(bootstrap=bootstrap, username=principal, password=SecretStr(password),
                       security_protocol=admin.security_protocol)


def remove_partner(admin: KafkaAccess, agency: str) -> bool:
    """Revokes the agency's principal: its ACLs and its SCRAM user."""
    principal = partner_principal(agency)
    security = BrokerSecurity(admin)
    security.revoke(principal)
    return security.delete_user(principal)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.kafka_setup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("provision", help="every role's user and ACLs, and every topic")
    add = commands.add_parser("partner-add", help="a partner's user and ACLs; its client "
                              "settings (with the password) are printed once")
    add.add_argument("agency_id")
    remove = commands.add_parser("partner-remove", help="revoke a partner's user and ACLs")
    remove.add_argument("agency_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    try:
        admin = admin_access(settings)
        if args.command == "provision":
            provision(admin, role_passwords(env), settings.topic_partitions,
                      bound=ErasureBound(settings.erasure_max_days))
        elif args.command == "partner-add":
            bootstrap = env.get(EXTERNAL_BOOTSTRAP) or admin.bootstrap
            access = add_partner(admin, args.agency_id, bootstrap)
            print(f"# {access.username}: shown once, the broker keeps only a salted hash")
            for key, value in access.librdkafka_config().items():
                print(f"{key}={value}")
        else:
            found = remove_partner(admin, args.agency_id)
            print(f"{partner_principal(args.agency_id)}: "
                  f"{'revoked' if found else 'no such user (its ACLs, if any, are gone)'}")
    except (SetupError, ValueError) as error:
        print(f"kafka-setup: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
