"""(1.1) No message stalls anything, through the real broker: floods of bad bytes and numbers
too large for any store each become one bounded dead letter, and the valid input published
right behind them (same key, same partition) is decided."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest

from shared.contract import Topic
from shared.messaging import MAX_DEAD_LETTER_BYTES
from tests.events import aid_request, referral
from tests.infra import Publisher, TopicWatcher, learn_trainee

pytestmark = pytest.mark.infra

FLOODS = {
    "0xFF bytes": b"\xff" * 900_000,
    "control characters": b"\x01\x02\x1f" * 100_000,
    "open brackets": b"[" * 200_000,
}


def raw_letter(watcher: TopicWatcher, sha256: str) -> tuple[dict[str, Any], bytes]:
    [(body, raw)] = [
        (body, raw) for topic, _key, body, raw in watcher.messages
        if topic == Topic.DEADLETTER and body and body.get("original_sha256") == sha256
    ]
    return body, raw


@pytest.mark.parametrize("flood", FLOODS, ids=str)
async def test_a_flood_is_one_bounded_dead_letter_and_the_next_referral_is_decided(
    publisher: Publisher, watcher: TopicWatcher, flood: str
) -> None:
    value = FLOODS[flood]
    key = f"FLOOD-{uuid.uuid4().hex[:8]}"
    valid = referral(referral_id=key)
    await publisher.send(Topic.REFERRALS_SUBMITTED, value, key=key)
    await publisher.send(Topic.REFERRALS_SUBMITTED, valid, key=key)

    await watcher.wait_for(Topic.REFERRALS_DECIDED, request_event_id=valid["event_id"])
    sha256 = hashlib.sha256(value).hexdigest()
    await watcher.wait_for(Topic.DEADLETTER, original_sha256=sha256)
    letter, raw = raw_letter(watcher, sha256)

    assert len(raw) <= MAX_DEAD_LETTER_BYTES
    assert letter["original_bytes"] == len(value)
    assert letter["source_topic"] == Topic.REFERRALS_SUBMITTED
    if letter["original_base64"] is not None:
        assert letter["original"] is None
        kept = base64.b64decode(letter["original_base64"])
    else:
        kept = letter["original"].encode("utf-8")
    assert kept and value.startswith(kept)
    assert letter["original_truncated"] == (len(kept) < len(value))
    assert watcher.keys(Topic.DEADLETTER, original_sha256=sha256) == [key]


async def test_a_quantity_too_large_for_any_store_is_a_dead_letter_held_or_not(
    publisher: Publisher, watcher: TopicWatcher
) -> None:
    unknown = uuid.uuid4().hex  # its request would be held: no enrollment yet
    held = aid_request(unknown, "meals", quantity=2**70)
    await publisher.send(Topic.AIDS_REQUESTED, held, key=unknown)
    known = await learn_trainee(publisher)
    huge = aid_request(known, "meals", quantity=2**70)
    after = aid_request(known, "meals", quantity=1)
    await publisher.send(Topic.AIDS_REQUESTED, huge, key=known)
    await publisher.send(Topic.AIDS_REQUESTED, after, key=known)
    await learn_trainee(publisher, trainee_id=unknown)
    released = aid_request(unknown, "laptop", amount_cents=30000)
    await publisher.send(Topic.AIDS_REQUESTED, released, key=unknown)

    [decided] = await watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=after["event_id"])
    [granted] = await watcher.wait_for(Topic.AIDS_DECIDED, request_event_id=released["event_id"])
    assert (decided["status"], granted["status"]) == ("granted", "granted")
    for request in (held, huge):
        sha256 = hashlib.sha256(json.dumps(request).encode()).hexdigest()
        [letter] = await watcher.wait_for(Topic.DEADLETTER, original_sha256=sha256)
        assert (letter["service"], letter["source_topic"]) == ("aids", Topic.AIDS_REQUESTED)
        assert "quantity" in letter["error"]
        assert str(2**70) not in letter["error"]
        assert watcher.find(Topic.AIDS_DECIDED, request_event_id=request["event_id"]) == []
