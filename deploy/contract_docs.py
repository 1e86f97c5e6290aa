"""The contract's machine-readable files, generated from the code: `shared/contract.py` for
the events, each service's FastAPI routes for its HTTP API.

`python -m deploy.contract_docs` (or `make docs`) writes, under `docs/`:

- `asyncapi.json`: an AsyncAPI 3.0 document of the whole system: one channel per topic,
  one message per event with its payload schema (the pydantic models' JSON Schema), its Kafka
  key and an example, and the operations (send / receive) of each party;
- `schemas/<topic>.json`: one JSON Schema (draft 2020-12) per topic, for partners who only
  want to validate what they send or read;
- `openapi/<service>.json`: each service's OpenAPI 3.1 document, the one it serves at
  `/docs/openapi.json` (`shared.docs.openapi_document` of its app: every route, with its
  parameters, its pydantic response models, the bearer scheme and the error answers).

The examples come from `docs/contract.md` (the first `json` block of each topic's section)
and are validated by the models here: an example the models refuse stops the generation.
The output is deterministic (no timestamps; the models' field order, topics in the
contract's order, routes in the order the services declare them), so that
`tests/deploy/test_contract_docs.py` and `tests/deploy/test_openapi_docs.py` can compare it
with the committed files. `--check` only compares, and exits 1 naming the files that differ.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from deploy.system import TOPOLOGIES, service_http_app
from shared.contract import MODELS, Topic
from shared.docs import openapi_document
from shared.kafka import MAX_MESSAGE_BYTES, TOPIC_CONFIG
from shared.settings import PROJECT_ROOT, Settings

Json = dict[str, Any]

DOCS = Path("docs")
CONTRACT_MD = DOCS / "contract.md"
ASYNCAPI = DOCS / "asyncapi.json"
SCHEMAS = DOCS / "schemas"
OPENAPI = DOCS / "openapi"

CONTRACT_REVISION = "1.1"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING_VERSION = "0.5.0"


# --- Who sends and who receives ------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A service of this repository, or someone outside it the contract names."""

    name: str
    description: str
    sends: tuple[Topic, ...] = ()
    receives: tuple[Topic, ...] = ()
    is_service: bool = True


def topology() -> tuple[Party, ...]:
    """Who publishes and who consumes each topic: the services as they declare themselves
    (`TOPOLOGY` in each `services/<name>/app.py`, gathered in `deploy/system.py`), then
    the parties outside the system, as the contract's flow has them."""
    t = Topic
    services = tuple(
        Party(declared.name, declared.description, sends=declared.outputs,
              receives=declared.inputs)
        for declared in TOPOLOGIES.values()
    )
    return (
        *services,
        Party("partner-agencies", "Missions Locales, France Travail, the MLDS and other "
              "agencies that refer young people.",
              sends=(t.REFERRALS_SUBMITTED,), receives=(t.REFERRALS_DECIDED,),
              is_service=False),
        Party("school-staff", "The schools' staff tools: derogations, enrollments, aid "
              "requests and exits.",
              sends=(t.DEROGATIONS_SUBMITTED, t.ENROLLMENTS_SUBMITTED, t.AIDS_REQUESTED,
                     t.EXITS_SUBMITTED),
              is_service=False),
        Party("finance", "The Region's finance staff: yearly budget envelopes per aid kind.",
              sends=(t.BUDGETS_SUBMITTED,), is_service=False),
        Party("operations", "Operators reading dead letters (`e2c deadletters`), who may "
              "replay a letter's original to its source topic once its cause is fixed.",
              receives=(t.DEADLETTER,), is_service=False),
    )


# --- What each topic is --------------------------------------------------------------------

PURPOSE: dict[Topic, str] = {
    Topic.REFERRALS_SUBMITTED: "A partner agency refers a young person to a school.",
    Topic.REFERRALS_DECIDED: "The decision on a referral, or on a derogation for it; "
    "(1.1) or its expiry, not enrolled in time (`expired`, `request_event_id` null).",
    Topic.DEROGATIONS_SUBMITTED: "School staff grant or refuse the derogation a 26 to 29 "
    "year old needs.",
    Topic.ENROLLMENTS_SUBMITTED: "School staff enroll an accepted referral.",
    Topic.ENROLLMENTS_DECIDED: "The answer to an enrollment; when enrolled, the trainee's "
    "minimised profile.",
    Topic.AIDS_REQUESTED: "School staff ask for an aid (laptop, meals, childcare) for a "
    "trainee.",
    Topic.AIDS_DECIDED: "The answer to an aid request: granted with its amount, or refused "
    "with one reason.",
    Topic.BUDGETS_SUBMITTED: "Finance sets (or replaces) one aid kind's envelope for one "
    "year.",
    Topic.EXITS_SUBMITTED: "School staff record a trainee's exit and its outcome.",
    Topic.EXITS_DECIDED: "The answer to an exit: recorded with its outcome category, or "
    "refused with one reason.",
    Topic.DEADLETTER: "An input a consumer could not read, kept with the reason and the "
    "original.",
}

KEY: dict[Topic, str] = {
    Topic.REFERRALS_SUBMITTED: "referral_id",
    Topic.REFERRALS_DECIDED: "referral_id",
    Topic.DEROGATIONS_SUBMITTED: "referral_id",
    Topic.ENROLLMENTS_SUBMITTED: "referral_id",
    Topic.ENROLLMENTS_DECIDED: "trainee_id, or referral_id when there is none (rejected)",
    Topic.AIDS_REQUESTED: "trainee_id",
    Topic.AIDS_DECIDED: "trainee_id",
    Topic.BUDGETS_SUBMITTED: "\"{year}:{kind}\", e.g. \"2024:meals\"",
    Topic.EXITS_SUBMITTED: "trainee_id",
    Topic.EXITS_DECIDED: "trainee_id",
    Topic.DEADLETTER: "the original record's key, or null when it had none",
}


def channel_id(topic: Topic) -> str:
    """`e2c.referrals.submitted.v1` -> `referralsSubmitted`."""
    first, *rest = topic.name.lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


def message_name(topic: Topic) -> str:
    return MODELS[topic].__name__


# --- Examples from docs/contract.md --------------------------------------------------------

_HEADING = re.compile(r"^#{1,6} (.*)$", re.MULTILINE)
_TOPIC_HEADING = re.compile(r"`(e2c\.[a-z.]+\.v1)`")
_JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples_from_markdown(text: str) -> dict[Topic, Json]:
    """Each topic's example: the first `json` block under the heading that names the topic
    (`` ### `e2c.referrals.submitted.v1` ``), before the next heading. Each is checked by the
    topic's model: raises `ValueError` when the model refuses one or a topic has none."""
    headings = list(_HEADING.finditer(text))
    found: dict[Topic, Json] = {}
    for index, heading in enumerate(headings):
        named = _TOPIC_HEADING.fullmatch(heading.group(1).strip())
        if named is None or Topic(named.group(1)) in found:
            continue
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        block = _JSON_BLOCK.search(text, heading.end(), end)
        if block is None:
            continue
        topic = Topic(named.group(1))
        example = json.loads(block.group(1))
        MODELS[topic].model_validate(example)  # a ValidationError is a ValueError
        found[topic] = example
    missing = [topic.value for topic in Topic if topic not in found]
    if missing:
        raise ValueError(f"{CONTRACT_MD} has no example for {', '.join(missing)}")
    return found


# --- JSON Schema per topic -----------------------------------------------------------------


def topic_schema(topic: Topic) -> Json:
    """The JSON Schema (draft 2020-12) of `topic`'s events, as its model validates them."""
    return {"$schema": JSON_SCHEMA_DIALECT, **MODELS[topic].model_json_schema()}


def schema_path(topic: Topic) -> Path:
    return SCHEMAS / f"{topic.value}.json"


# --- AsyncAPI ------------------------------------------------------------------------------


def kafka_channel_binding() -> Json:
    """The topics as the services create them (`shared.kafka.ensure_topics`)."""
    partitions = Settings.model_fields["topic_partitions"].default
    return {
        "partitions": partitions,
        "topicConfiguration": {
            "cleanup.policy": ["delete"],
            "retention.ms": int(TOPIC_CONFIG["retention.ms"]),
            "max.message.bytes": MAX_MESSAGE_BYTES,
        },
        "bindingVersion": KAFKA_BINDING_VERSION,
    }


def _names(parties: Sequence[Party]) -> str:
    return ", ".join(party.name for party in parties) or "nobody named by the contract"


def _channel(topic: Topic, parties: Sequence[Party]) -> Json:
    senders = [party for party in parties if topic in party.sends]
    receivers = [party for party in parties if topic in party.receives]
    description = (f"{PURPOSE[topic]} Key: {KEY[topic]}. Published by {_names(senders)}; "
                   f"read by {_names(receivers)}.")
    name = message_name(topic)
    return {
        "address": topic.value,
        "title": topic.value,
        "description": description,
        "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        "bindings": {"kafka": kafka_channel_binding()},
    }


def _message(topic: Topic, model: type[BaseModel], example: Json) -> Json:
    nullable = topic is Topic.DEADLETTER
    key: Json = {"type": ["string", "null"] if nullable else "string",
                 "description": KEY[topic]}
    return {
        "name": model.__name__,
        "title": model.__name__,
        "summary": PURPOSE[topic],
        "contentType": "application/json",
        "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        "bindings": {"kafka": {"key": key, "bindingVersion": KAFKA_BINDING_VERSION}},
        "examples": [{"name": f"{model.__name__}Example", "payload": example}],
    }


def _operations(parties: Sequence[Party]) -> Json:
    operations: Json = {}
    for party in parties:
        for action, topics in (("send", party.sends), ("receive", party.receives)):
            for topic in topics:
                channel = channel_id(topic)
                verb = "publishes to" if action == "send" else "consumes"
                operations[f"{party.name}.{action}.{channel}"] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel}"},
                    "summary": f"{party.name} {verb} {topic.value}",
                    "messages": [{"$ref": f"#/channels/{channel}/messages/"
                                          f"{message_name(topic)}"}],
                    "tags": [{"name": party.name}],
                }
    return operations


def component_schemas() -> Json:
    """Every model and the enums and objects they use, referenced as
    `#/components/schemas/<Name>`."""
    models: list[tuple[type[BaseModel], Any]] = [(MODELS[t], "validation") for t in Topic]
    _, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return dict(definitions.get("$defs", {}))


def asyncapi_document(examples: dict[Topic, Json]) -> Json:
    parties = topology()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "E2C events",
            "version": CONTRACT_REVISION,
            "description": (
                "The event contract of the Écoles de la 2ème Chance of Occitanie, version 1 "
                f"(revision {CONTRACT_REVISION}): referrals, enrollment, aids and exits over "
                "Kafka. Generated from shared/contract.py by `make docs`; the rules behind "
                "each field are in docs/contract.md. One JSON object (UTF-8) per record, "
                "keys UTF-8 strings; unknown fields are ignored; no broker address here."
            ),
            "tags": [{"name": party.name, "description": party.description
                      + (" A service of this repository." if party.is_service
                         else " Outside this repository.")}
                     for party in parties],
        },
        "defaultContentType": "application/json",
        "channels": {channel_id(topic): _channel(topic, parties) for topic in Topic},
        "operations": _operations(parties),
        "components": {
            "schemas": component_schemas(),
            "messages": {message_name(topic): _message(topic, MODELS[topic], examples[topic])
                         for topic in Topic},
        },
    }


# --- OpenAPI, per service ------------------------------------------------------------------


def openapi_path(service: str) -> Path:
    return OPENAPI / f"{service}.json"


def service_openapi(service: str) -> Json:
    """The service's OpenAPI 3.1 document, as it serves it at `/docs/openapi.json`."""
    return openapi_document(service_http_app(service))


# --- Files ---------------------------------------------------------------------------------


def dumps(document: Json) -> str:
    """Two-space JSON, UTF-8 as is, one trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def generate(root: Path = PROJECT_ROOT) -> dict[Path, str]:
    """Every generated file (path relative to `root`) and its text, in memory."""
    examples = examples_from_markdown((root / CONTRACT_MD).read_text(encoding="utf-8"))
    files = {ASYNCAPI: dumps(asyncapi_document(examples))}
    for topic in Topic:
        files[schema_path(topic)] = dumps(topic_schema(topic))
    for service in TOPOLOGIES:
        files[openapi_path(service)] = dumps(service_openapi(service))
    return files


def differences(root: Path = PROJECT_ROOT) -> list[Path]:
    """Generated files missing or different on disk, and stale schemas or OpenAPI documents
    nothing generates."""
    files = generate(root)
    differ = [path for path, text in files.items()
              if not (root / path).is_file()
              or (root / path).read_text(encoding="utf-8") != text]
    on_disk = [*sorted((root / SCHEMAS).glob("*.json")), *sorted((root / OPENAPI).glob("*.json"))]
    stale = [path.relative_to(root) for path in on_disk if path.relative_to(root) not in files]
    return differ + stale


def write(root: Path = PROJECT_ROOT) -> list[Path]:
    """Writes what differs, deletes stale schemas and documents; returns the paths touched."""
    files = generate(root)
    touched = differences(root)
    for path in touched:
        target = root / path
        if path in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[path], encoding="utf-8")
        else:
            target.unlink()
    return touched


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.contract_docs", description=(
        "Generate docs/asyncapi.json and docs/schemas/*.json from shared/contract.py, and "
        "docs/openapi/*.json from the services' HTTP routes."))
    parser.add_argument("--check", action="store_true",
                        help="only compare with the files on disk; exit 1 if any differ")
    args = parser.parse_args(argv)
    if args.check:
        stale = differences()
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        if stale:
            print("run `make docs` and commit the result", file=sys.stderr)
        return 1 if stale else 0
    touched = write()
    for path in touched:
        print(f"wrote {path}")
    print(f"{len(touched)} file(s) changed" if touched else "docs/ already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
