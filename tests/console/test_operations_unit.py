"""The operations page's banner and tables from `/ops/pipeline` answers, pure (no stack)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from console import formats
from console.operations import (
    DEAD_LETTER_WINDOW,
    HEARTBEAT_STALE_SECONDS,
    LAG_ALERT,
    OUTBOX_BACKLOG_ALERT,
    Unanswered,
    banner,
    operations_page,
)
from shared.ops import REDIS_DOWN

NOW = datetime(2026, 12, 3, 15, 4, 5, tzinfo=UTC)  # 16:04:05 in Paris
NBSP = "\u00a0"


def beats(**status: str) -> list[dict[str, Any]]:
    return [{"service": name, "status": status.get(name, "up"),
             "instances": [{"instance": f"{name}-1", "age_seconds": 1.2,
                            "last_processed_age_seconds": 3.0}]}
            for name in ("referrals", "aids", "outcomes")]


def healthy(name: str, **changes: Any) -> dict[str, Any]:
    pipeline: dict[str, Any] = {
        "service": name, "instance": f"{name}-1", "group_id": f"e2c-{name}",
        "lag": [{"topic": f"e2c.{name}.in.v1", "partition": p, "committed": 10, "end": 10,
                 "lag": 0} for p in range(3)],
        "lag_total": 0, "outbox_backlog": 0, "outbox_parked": {"count": 0, "last": []},
        "held": 0 if name != "referrals" else None, "last_processed_age_seconds": 4.5,
        "dead_letters": {"count": 0, "last": []}, "heartbeats": beats(), "errors": {},
    }
    pipeline.update(changes)
    return pipeline


def all_healthy() -> dict[str, Any]:
    return {name: healthy(name) for name in ("referrals", "aids", "outcomes")}


def letter(age: timedelta, event_id: str = "0b5e3f1c-3d7e-4b4e-9a55-2c2b2f6b7a10",
           **changes: Any) -> dict[str, Any]:
    body = {"dlt_partition": 0, "dlt_offset": 7, "event_id": event_id,
            "occurred_at": (NOW - age).isoformat(), "service": "outcomes",
            "source_topic": "e2c.exits.submitted.v1", "partition": 2, "offset": 41,
            "error": "not JSON", "original_bytes": 30, "original_truncated": False}
    body.update(changes)
    return body


def test_everything_healthy_is_green() -> None:
    verdict = banner(all_healthy(), NOW)
    assert verdict.ok and verdict.problems == []
    page = operations_page(all_healthy(), NOW)
    assert page.banner.ok
    assert page.updated_at == "16:04:05"  # Paris time
    assert [s.name for s in page.services] == ["referrals", "aids", "outcomes"]
    assert page.letters == []


def test_old_dead_letters_leave_the_banner_green_but_are_listed() -> None:
    answers = all_healthy()
    answers["outcomes"]["dead_letters"] = {
        "count": 1, "last": [letter(DEAD_LETTER_WINDOW + timedelta(minutes=1))]}
    assert banner(answers, NOW).ok
    [row] = operations_page(answers, NOW).letters
    assert row.service == "outcomes" and row.replayable and row.where == "2 / 41"


def test_each_thing_wrong_turns_it_red_and_is_named() -> None:
    answers: dict[str, Any] = {
        "referrals": Unanswered(None),
        "aids": healthy("aids", lag_total=LAG_ALERT + 1, outbox_backlog=OUTBOX_BACKLOG_ALERT + 5,
                        outbox_parked={"count": 2, "last": []}, errors={"held": "TimeoutError"},
                        heartbeats=beats(aids="down")),
        "outcomes": healthy("outcomes", dead_letters={"count": 1, "last": [
            letter(timedelta(minutes=5))]}, heartbeats=beats(aids="down")),
    }
    problems = banner(answers, NOW).problems
    assert problems == [
        "Orientations (referrals) ne répond pas.",
        "Aides (aids) : lecture impossible (demandes en attente).",
        f"Aides (aids) : 101 messages en retard (seuil {LAG_ALERT}).",
        f"Aides (aids) : 105 messages en attente d'envoi (seuil {OUTBOX_BACKLOG_ALERT}).",
        "Aides (aids) : 2 messages refusés par le broker, mis de côté (outbox).",
        "Résultats (outcomes) : 1 lettre morte depuis 24 h.",
        "Aides (aids) : aucun battement de cœur, le service semble arrêté.",
    ]
    assert not banner(answers, NOW).ok


def test_thresholds_are_limits_not_alarms() -> None:
    answers = all_healthy()
    answers["aids"] = healthy("aids", lag_total=LAG_ALERT, outbox_backlog=OUTBOX_BACKLOG_ALERT)
    assert banner(answers, NOW).ok


def test_a_stale_heartbeat_redis_down_an_error_status_and_parked_webhooks() -> None:
    stale = beats()
    stale[2]["instances"][0]["age_seconds"] = HEARTBEAT_STALE_SECONDS + 2.0
    answers = all_healthy()
    answers["referrals"] = healthy("referrals", heartbeats=stale,
                                   webhooks={"parked": 3, "pending": 0})
    assert banner(answers, NOW).problems == [
        "Orientations (referrals) : 3 livraisons de webhook abandonnées.",
        f"Résultats (outcomes) : dernier battement de cœur il y a 12,0{NBSP}s.",
    ]
    down = {"referrals": healthy("referrals", heartbeats=[
        {"service": n, "status": REDIS_DOWN, "instances": []} for n in ("referrals", "aids")]),
        "aids": Unanswered(500)}
    assert banner(down, NOW).problems == [
        "Aides (aids) répond en erreur (500).",
        "Battements de cœur illisibles : Redis ne répond pas.",
    ]


def test_a_full_listing_of_recent_letters_says_at_least() -> None:
    answers = all_healthy()
    answers["outcomes"]["dead_letters"] = {"count": 50, "last": [
        letter(timedelta(minutes=m), event_id=f"0b5e3f1c-3d7e-4b4e-9a55-2c2b2f6b7a{m:02d}")
        for m in range(3)]}
    assert banner(answers, NOW, limit=3).problems == [
        "Résultats (outcomes) : au moins 3 lettres mortes depuis 24 h."]


def test_letters_are_newest_first_and_only_whole_ones_replayable() -> None:
    answers = all_healthy()
    answers["outcomes"]["dead_letters"] = {"count": 2, "last": [
        letter(timedelta(hours=2)), letter(timedelta(minutes=1), original_truncated=True)]}
    answers["aids"]["dead_letters"] = {"count": 1, "last": [
        {"dlt_partition": 1, "dlt_offset": 3, "event_id": None,
         "error": "unreadable dead letter (not a JSON object)"}]}
    page = operations_page(answers, NOW)
    assert [(row.service, row.replayable) for row in page.letters] == [
        ("outcomes", False), ("outcomes", True), ("aids", False)]
    assert page.letters[1].shown_at == "03/12/2026 14:04:05"  # 13:04 UTC, in Paris
    assert page.letters[2].shown_at == "–" and page.letters[2].source_topic == "–"


def test_the_tables_hold_the_answers_figures() -> None:
    answers: dict[str, Any] = all_healthy()
    answers["aids"] = healthy("aids", lag_total=7, held=4, last_processed_age_seconds=125.0)
    answers["aids"]["lag"][1].update(committed=3, lag=7)
    answers["outcomes"] = Unanswered(None)
    page = operations_page(answers, NOW)
    aids = page.services[1]
    assert (aids.lag_total, aids.held, aids.last_processed) == (7, 4, f"2{NBSP}min 05{NBSP}s")
    assert [row.lag for row in aids.lag] == [0, 7, 0]
    [topic] = aids.lag_topics  # one topic, its partitions side by side
    assert (topic.short, topic.total, aids.partitions) == ("aids.in", 7, [0, 1, 2])
    assert [(c.partition, c.committed, c.end, c.lag) for c in topic.cells if c] == [
        (0, 10, 10, 0), (1, 3, 10, 7), (2, 10, 10, 0)]
    assert not page.services[2].answered
    assert [(row.service, row.status_label) for row in page.heartbeats] == [
        ("referrals", "en marche"), ("aids", "en marche"), ("outcomes", "en marche")]


def test_times_and_ages_in_french() -> None:
    assert formats.clock(NOW) == "16:04:05"
    assert formats.moment("2026-12-03T23:30:00+00:00") == "04/12/2026 00:30:00"
    assert formats.moment("2026-12-03T23:30:00") == "–"  # no offset: not placed
    assert formats.moment(None) == "–"
    assert formats.seconds(4.25) == f"4,2{NBSP}s"
    assert formats.seconds(3725) == f"1{NBSP}h 02{NBSP}min"
    assert formats.seconds(None) == "–"
