"""The contract's generated files (docs/asyncapi.json, docs/schemas/) against the code.

They must be exactly what `deploy.contract_docs` makes from `shared/contract.py` and
`docs/contract.md` today; each JSON Schema must accept the events the models build and
refuse what the models refuse; the AsyncAPI document must be valid AsyncAPI 3.0 (checked
with the specification's own JSON Schema, `tests/data/asyncapi-3.0.0.schema.json`, a copy
of `schemas/3.0.0-without-$id.json` from the npm package @asyncapi/specs 6.11.1,
Apache-2.0, sha256 abe96881...e5b20f); its producers and consumers must be the services'
wiring. No I/O but reading files.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker
from pydantic import ValidationError

from deploy import contract_docs as docs
from shared.contract import (
    ALL_TOPICS,
    MAX_SAFE_INTEGER,
    MODELS,
    Topic,
    event_key,
    new_event_fields,
)
from shared.settings import PROJECT_ROOT, Settings
from tests.events import EXAMPLES

ROOT = PROJECT_ROOT
ASYNCAPI_SPEC = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"
REGENERATE = "run `make docs` (python -m deploy.contract_docs) and commit what it writes"

Json = dict[str, Any]


def load(path: Path) -> Json:
    document: Json = json.loads(path.read_text(encoding="utf-8"))
    return document


def schema_validator(topic: Topic) -> Draft202012Validator:
    """The committed schema of `topic`, checking the formats jsonschema knows (uuid, date)."""
    return Draft202012Validator(load(ROOT / docs.schema_path(topic)),
                                format_checker=FormatChecker())


def built_event(topic: Topic) -> Json:
    """A real event: the contract's example read by the topic's model, with fresh
    `event_id` and `occurred_at` as the services make them, written as JSON."""
    event = MODELS[topic].model_validate({**EXAMPLES[topic], **new_event_fields()})
    as_json: Json = json.loads(event.model_dump_json())
    return as_json


def model_accepts(topic: Topic, data: Json) -> bool:
    try:
        MODELS[topic].model_validate_json(json.dumps(data))
    except ValidationError:
        return False
    return True


# --- The committed files are the generated ones --------------------------------------------


def test_the_committed_files_are_what_the_code_generates() -> None:
    stale = docs.differences(ROOT)

    assert not stale, (f"docs/ is out of date with shared/contract.py or docs/contract.md: "
                       f"{', '.join(map(str, stale))}; {REGENERATE}")


def test_generation_is_deterministic() -> None:
    assert docs.generate(ROOT) == docs.generate(ROOT)


def test_every_file_is_two_space_json_with_one_trailing_newline() -> None:
    for path, text in docs.generate(ROOT).items():
        assert text.endswith("}\n") and not text.endswith("\n\n"), path
        assert docs.dumps(json.loads(text)) == text, path


def test_the_drift_check_sees_a_changed_a_missing_and_a_stale_file(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / docs.CONTRACT_MD, tmp_path / docs.CONTRACT_MD)
    assert set(docs.write(tmp_path)) == set(docs.generate(ROOT))  # everything was missing
    changed = docs.schema_path(Topic.AIDS_DECIDED)
    (tmp_path / changed).write_text("{}\n", encoding="utf-8")
    missing = docs.schema_path(Topic.EXITS_SUBMITTED)
    (tmp_path / missing).unlink()
    stale = docs.SCHEMAS / "e2c.gone.v1.json"
    (tmp_path / stale).write_text("{}\n", encoding="utf-8")

    assert set(docs.differences(tmp_path)) == {changed, missing, stale}
    assert set(docs.write(tmp_path)) == {changed, missing, stale}
    assert docs.differences(tmp_path) == []
    assert not (tmp_path / stale).exists()


def test_check_mode_exits_0_when_up_to_date() -> None:
    assert docs.main(["--check"]) == 0


# --- One JSON Schema per topic, agreeing with the models -----------------------------------


def test_one_schema_file_per_topic() -> None:
    files = {path.name for path in (ROOT / docs.SCHEMAS).glob("*.json")}

    assert files == {f"{topic.value}.json" for topic in ALL_TOPICS}


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=str)
def test_each_schema_is_a_valid_draft_2020_12_schema(topic: Topic) -> None:
    schema = load(ROOT / docs.schema_path(topic))

    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == docs.JSON_SCHEMA_DIALECT
    assert schema["title"] == MODELS[topic].__name__


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=str)
def test_the_schema_accepts_an_event_built_from_the_model(topic: Topic) -> None:
    event = built_event(topic)

    schema_validator(topic).validate(event)
    with_extra = {**event, "sent_by": "a partner's own field"}  # unknown fields are ignored
    schema_validator(topic).validate(with_extra)
    assert model_accepts(topic, with_extra)


def _without(data: Json, field: str) -> Json:
    return {key: value for key, value in data.items() if key != field}


# Invalid for every topic: (name, change to the built event).
COMMON_INVALID = [
    ("missing event_id", lambda e: _without(e, "event_id")),
    ("event_id not a UUID", lambda e: {**e, "event_id": "not-a-uuid"}),
    ("schema_version 2", lambda e: {**e, "schema_version": 2}),
    ("schema_version as text", lambda e: {**e, "schema_version": "1"}),
    ("missing occurred_at", lambda e: _without(e, "occurred_at")),
    ("not an object", lambda e: [e]),
]

# One more per topic, on a field of its own: a wrong enum, type, bound, pattern or date.
OWN_INVALID: dict[Topic, tuple[str, Any]] = {
    Topic.REFERRALS_SUBMITTED: ("unknown agency kind",
                                lambda e: {**e, "agency": {**e["agency"], "kind": "school"}}),
    Topic.REFERRALS_DECIDED: ("unknown reason", lambda e: {**e, "reasons": ["too_tall"]}),
    Topic.DEROGATIONS_SUBMITTED: ("granted as text", lambda e: {**e, "granted": "true"}),
    Topic.ENROLLMENTS_SUBMITTED: ("impossible date", lambda e: {**e, "enrolled_on": "2024-02-30"}),
    Topic.ENROLLMENTS_DECIDED: ("unknown status", lambda e: {**e, "status": "waiting"}),
    Topic.AIDS_REQUESTED: ("quantity beyond 2^53 - 1",
                           lambda e: {**e, "quantity": MAX_SAFE_INTEGER + 1}),
    Topic.AIDS_DECIDED: ("unknown kind", lambda e: {**e, "kind": "bicycle"}),
    Topic.BUDGETS_SUBMITTED: ("negative envelope", lambda e: {**e, "envelope_cents": -1}),
    Topic.EXITS_SUBMITTED: ("unknown outcome", lambda e: {**e, "outcome": "cdi"}),
    Topic.EXITS_DECIDED: ("unknown category", lambda e: {**e, "category": "work"}),
    Topic.DEADLETTER: ("offset as text", lambda e: {**e, "offset": "1234"}),
}

INVALID = [
    pytest.param(topic, change, id=f"{topic}-{name}")
    for topic in ALL_TOPICS
    for name, change in [*COMMON_INVALID, OWN_INVALID[topic]]
]


@pytest.mark.parametrize(("topic", "change"), INVALID)
def test_the_schema_refuses_what_the_model_refuses(topic: Topic, change: Any) -> None:
    invalid = change(copy.deepcopy(built_event(topic)))

    assert not schema_validator(topic).is_valid(invalid)
    assert not model_accepts(topic, invalid)  # a dead letter, as the schema says


def test_the_referral_id_pattern_is_in_the_schema() -> None:
    event = built_event(Topic.REFERRALS_SUBMITTED)

    for bad in ("", "x" * 65, "ML TLS 1", "ML/TLS/1"):
        assert not schema_validator(Topic.REFERRALS_SUBMITTED).is_valid(
            {**event, "referral_id": bad}), bad
    schema_validator(Topic.REFERRALS_SUBMITTED).validate({**event, "referral_id": "a._-Z9"})


# --- The examples of docs/contract.md ------------------------------------------------------


def contract_examples() -> dict[Topic, Json]:
    return docs.examples_from_markdown((ROOT / docs.CONTRACT_MD).read_text(encoding="utf-8"))


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=str)
def test_the_example_of_each_topic_follows_its_schema(topic: Topic) -> None:
    schema_validator(topic).validate(contract_examples()[topic])


def test_an_example_the_model_refuses_stops_the_generation() -> None:
    text = (ROOT / docs.CONTRACT_MD).read_text(encoding="utf-8")
    broken = text.replace('"outcome": "durable_employment", "satisfied": true',
                          '"outcome": "cdi", "satisfied": true', 1)
    assert broken != text

    with pytest.raises(ValidationError):
        docs.examples_from_markdown(broken)


def test_a_topic_without_example_stops_the_generation() -> None:
    text = (ROOT / docs.CONTRACT_MD).read_text(encoding="utf-8")
    without = text.replace("### `e2c.budgets.submitted.v1`", "### Budgets", 1)

    with pytest.raises(ValueError, match=re.escape(Topic.BUDGETS_SUBMITTED.value)):
        docs.examples_from_markdown(without)


@pytest.mark.parametrize("topic", [t for t in ALL_TOPICS if " " not in docs.KEY[t]], ids=str)
def test_the_documented_key_is_the_key_the_services_use(topic: Topic) -> None:
    event = MODELS[topic].model_validate(contract_examples()[topic])

    assert event_key(topic, event) == getattr(event, docs.KEY[topic])


# --- The AsyncAPI document -----------------------------------------------------------------


def asyncapi() -> Json:
    return load(ROOT / docs.ASYNCAPI)


def resolve(document: Json, ref: str) -> Any:
    found: Any = document
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return found


def test_the_document_is_valid_asyncapi_3() -> None:
    spec = load(ASYNCAPI_SPEC)
    errors = [f"{'/'.join(map(str, error.path))}: {error.message}"
              for error in Draft7Validator(spec).iter_errors(asyncapi())]

    assert not errors, "\n".join(errors)


def test_the_asyncapi_check_catches_a_wrong_document() -> None:
    document = asyncapi()
    operation = next(iter(document["operations"].values()))
    operation["action"] = "publish"  # AsyncAPI 2's word

    assert not Draft7Validator(load(ASYNCAPI_SPEC)).is_valid(document)


def test_one_channel_per_topic_with_its_model() -> None:
    document = asyncapi()
    addresses = {channel["address"]: channel for channel in document["channels"].values()}

    assert list(addresses) == [topic.value for topic in ALL_TOPICS]
    for topic in ALL_TOPICS:
        (message,) = addresses[topic]["messages"].values()
        payload = resolve(document, message["$ref"])["payload"]
        assert payload == {"$ref": f"#/components/schemas/{MODELS[topic].__name__}"}
        kafka = addresses[topic]["bindings"]["kafka"]
        assert kafka["partitions"] == Settings.model_fields["topic_partitions"].default
        assert kafka["topicConfiguration"]["retention.ms"] == -1


@pytest.mark.parametrize("topic", ALL_TOPICS, ids=str)
def test_the_payload_schemas_accept_the_events_and_the_examples(topic: Topic) -> None:
    document = asyncapi()
    name = MODELS[topic].__name__
    # The components are resolved from the validator's root: `{"$ref", "components"}`.
    validator = Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]},
        format_checker=FormatChecker(),
    )

    validator.validate(built_event(topic))
    for example in document["components"]["messages"][name]["examples"]:
        validator.validate(example["payload"])
    assert not validator.is_valid({**built_event(topic), "schema_version": 2})


def test_every_operation_points_at_its_channel_and_message() -> None:
    document = asyncapi()

    assert document["operations"]
    for name, operation in document["operations"].items():
        channel = resolve(document, operation["channel"]["$ref"])
        for message in operation["messages"]:
            ref = message["$ref"]
            assert ref.startswith(operation["channel"]["$ref"] + "/messages/"), name
            assert resolve(document, ref) in channel["messages"].values(), name


# --- Producers and consumers against the services' wiring ----------------------------------


def test_every_topic_has_a_sender_and_a_receiver() -> None:
    parties = docs.topology()
    services = {party.name for party in parties if party.is_service}

    assert services == {"referrals", "aids", "outcomes"}
    for topic in ALL_TOPICS:
        assert any(topic in party.sends for party in parties), topic
        assert any(topic in party.receives for party in parties), topic
