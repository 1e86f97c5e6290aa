"""`e2c partners add|remove` and `e2c stack client-config` against the secured broker: a
partner gets an HTTP token and Kafka credentials together, writes referrals only, and
loses both at its removal."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from pydantic import SecretStr

from deploy import cli
from deploy.local_kafka import LocalKafka
from shared.contract import Topic
from shared.http import load_tokens, partner_role
from shared.kafka_access import KafkaAccess
from tests.tokens import write_tokens_file

pytestmark = pytest.mark.infra

SEND_TIMEOUT = 20


@pytest.fixture
def as_the_stack(kafka: LocalKafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's stack is the test broker (same data folder and port), with its own tokens
    file; E2C_KAFKA_* unset, as on an operator's machine."""
    tokens = tmp_path / "tokens.json"
    write_tokens_file(tokens)
    monkeypatch.setenv("E2C_DATA_DIR", str(kafka.data_dir))
    monkeypatch.setenv("E2C_KAFKA_PORT", str(kafka.port))
    monkeypatch.setenv("E2C_KAFKA_CONTROLLER_PORT", str(kafka.controller_port))
    monkeypatch.setenv("E2C_TOKENS_FILE", str(tokens))
    for name in ("E2C_KAFKA_USERNAME", "E2C_KAFKA_PASSWORD", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    return tokens


def client_config(role: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    capsys.readouterr()
    assert cli.main(["stack", "client-config", "--role", role, "--json"]) == 0
    config: dict[str, str] = json.loads(capsys.readouterr().out)
    return config


def as_access(config: dict[str, str]) -> KafkaAccess:
    return KafkaAccess(bootstrap=config["bootstrap_servers"], username=config["username"],
                       password=SecretStr(config["password"]),
                       security_protocol=config["security_protocol"])  # type: ignore[arg-type]


async def send(access: KafkaAccess, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(**access.client_options(), request_timeout_ms=10_000)
    await asyncio.wait_for(producer.start(), SEND_TIMEOUT)
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=b"k"), SEND_TIMEOUT)
    finally:
        await producer.stop()


def test_client_config_prints_what_a_role_needs_and_it_connects(
    kafka: LocalKafka, as_the_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = client_config("admin", capsys)
    staff = client_config("staff", capsys)

    assert admin["bootstrap_servers"] == kafka.bootstrap
    assert (admin["security_protocol"], admin["sasl_mechanism"]) == (
        "SASL_PLAINTEXT", "SCRAM-SHA-512")
    assert admin["password"] == kafka.admin_password_file.read_text().strip()
    assert staff["username"] == "staff" and len(staff["password"]) >= 32
    asyncio.run(send(as_access(staff), Topic.EXITS_SUBMITTED, b"{}"))  # staff may write exits

    text = capsys.readouterr()
    assert cli.main(["stack", "client-config", "--role", "nobody"]) == 1
    assert "nobody" in capsys.readouterr().err and text.err == ""


def test_a_partner_added_gets_both_doors_and_loses_both_when_removed(
    kafka: LocalKafka, as_the_stack: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agency = f"ml-cli-{uuid.uuid4().hex[:8]}"
    capsys.readouterr()

    assert cli.main(["partners", "add", agency]) == 0

    printed = capsys.readouterr().out
    [token] = [t for t, role in load_tokens(as_the_stack).items() if role == partner_role(agency)]
    assert token in printed
    config = client_config(f"partner-{agency}", capsys)
    assert config["password"] in printed and config["username"] == f"partner-{agency}"
    partner = as_access(config)
    asyncio.run(send(partner, Topic.REFERRALS_SUBMITTED, b'{"partner": "may refer"}'))
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(send(partner, Topic.EXITS_SUBMITTED, b"{}"))
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(read_one(partner, Topic.REFERRALS_SUBMITTED))

    assert cli.main(["partners", "remove", agency]) == 0

    assert "revoked" in capsys.readouterr().out
    assert partner_role(agency) not in load_tokens(as_the_stack).values()
    with pytest.raises((KafkaError, TimeoutError)):
        asyncio.run(send(partner, Topic.REFERRALS_SUBMITTED, b'{"partner": "revoked"}'))
    assert cli.main(["stack", "client-config", "--role", f"partner-{agency}"]) == 1


async def read_one(access: KafkaAccess, topic: str) -> None:
    consumer = AIOKafkaConsumer(topic, **access.client_options(), group_id=None,
                                auto_offset_reset="earliest", request_timeout_ms=10_000)
    await asyncio.wait_for(consumer.start(), SEND_TIMEOUT)
    try:
        await asyncio.wait_for(consumer.getone(), SEND_TIMEOUT)
    finally:
        await consumer.stop()
