"""The partners page in headless Chromium and over HTTP against the real stack.

A partner agency of its own (a token added to the stack's tokens file, as
`e2c tokens partner add` does, so that no other test's referrals are counted) refers seven
young people through the broker; three are enrolled and two leave. The page's funnel equals
the outcomes service's JSON and the counts of the decisions watched on the topics; the chart
holds its table's numbers; the rows are the referrals sent, with their decisions; the status
filter works; another agency's page answers 403, however it is reached."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from markupsafe import escape
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from selenium.webdriver.support.wait import WebDriverWait

from console.formats import PARIS
from console.partners_routes import OTHER_AGENCY
from deploy.harness import ServiceProcesses
from shared.contract import Topic
from shared.http import partner_tokens_changed
from tests import events, tokens
from tests.console.conftest import Console, screenshot, sign_in, signin, text_of
from tests.infra import Publisher, TopicWatcher, poll

pytestmark = pytest.mark.infra

STEPS = ("received", "accepted", "enrolled", "exited", "with_solution")
# Birth dates: five eligible (19 to 23 now), one too old, one needing a derogation (26).
ELIGIBLE = ("2005-02-10", "2006-03-11", "2004-04-12", "2007-01-13", "2003-05-14")
TOO_OLD, NEEDS_DEROGATION = "1980-01-01", "2000-06-01"
ENROLLED_AFTER = (4, 6, 10)  # days after the acceptance, for the first three accepted
# (days after the enrollment, outcome) for the first two enrolled: one solution, one not.
EXITS = ((30, "durable_employment"), (20, "dropout"))


@dataclass
class Sent:
    """A referral sent and what the topics said of it."""

    referral_id: str
    name: str
    status: str
    reasons: list[str]
    stage: str
    trainee_id: str | None
    decided_on: date  # Paris day of its decision
    enrolled_on: date | None = None


@dataclass
class PartnerYear:
    agency_id: str
    token: str
    year: int
    sent: list[Sent]
    funnel: dict[str, Any]  # counted from the decisions watched, medians from the dates sent


def _paris_day(moment: str) -> date:
    return datetime.fromisoformat(moment).astimezone(PARIS).date()


async def _refer(publisher: Publisher, watcher: TopicWatcher,
                 agency_id: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    agency = {"kind": "mission_locale", "id": agency_id, "name": "ML des tests de la console"}
    now = datetime.now(UTC).isoformat()
    sent = [events.referral(agency=agency, school_id="toulouse", occurred_at=now,
                            candidate={"birth_date": born})
            for born in (*ELIGIBLE, TOO_OLD, NEEDS_DEROGATION)]
    for event in sent:
        await publisher.send(Topic.REFERRALS_SUBMITTED, event, key=event["referral_id"])
    decided = []
    for event in sent:
        [decision] = await watcher.wait_for(Topic.REFERRALS_DECIDED, timeout=60,
                                            request_event_id=event["event_id"])
        decided.append((event, decision))
    return decided


async def _enroll(publisher: Publisher, watcher: TopicWatcher, referral_id: str,
                  on: date) -> dict[str, Any]:
    event = events.enrollment(referral_id, school_id="toulouse", enrolled_on=on.isoformat())
    await publisher.send(Topic.ENROLLMENTS_SUBMITTED, event, key=referral_id)
    [decision] = await watcher.wait_for(Topic.ENROLLMENTS_DECIDED, timeout=60,
                                        request_event_id=event["event_id"])
    assert decision["status"] == "enrolled", decision
    return dict(decision)


async def _leave(publisher: Publisher, watcher: TopicWatcher, trainee_id: str, on: date,
                 outcome: str) -> dict[str, Any]:
    event = events.exit_submitted(trainee_id, exited_on=on.isoformat(), outcome=outcome)
    await publisher.send(Topic.EXITS_SUBMITTED, event, key=trainee_id)
    [decision] = await watcher.wait_for(Topic.EXITS_DECIDED, timeout=60,
                                        request_event_id=event["event_id"])
    assert decision["status"] == "recorded", decision
    return dict(decision)


def _median(values: list[int]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


@pytest.fixture(scope="module")
async def partner_year(stack: ServiceProcesses, publisher: Publisher,
                       watcher: TopicWatcher) -> AsyncIterator[PartnerYear]:
    agency_id = f"ml-console-{uuid.uuid4().hex[:8]}"
    tokens_file = stack.data_dir / "tokens.json"
    token = partner_tokens_changed(tokens_file, agency_id, add=True)
    assert token is not None
    try:
        yield await _partner_year(stack, publisher, watcher, agency_id, token)
    finally:
        partner_tokens_changed(tokens_file, agency_id, add=False)


async def _partner_year(stack: ServiceProcesses, publisher: Publisher, watcher: TopicWatcher,
                        agency_id: str, token: str) -> PartnerYear:
    sent = [Sent(event["referral_id"],
                 f"{event['candidate']['first_name']} {event['candidate']['last_name']}",
                 decision["status"], decision["reasons"], decision["status"],
                 decision["trainee_id"], _paris_day(decision["occurred_at"]))
            for event, decision in await _refer(publisher, watcher, agency_id)]
    accepted = [s for s in sent if s.status == "accepted"]
    assert len(accepted) == len(ELIGIBLE)
    for referral, days in zip(accepted, ENROLLED_AFTER, strict=False):
        referral.enrolled_on = referral.decided_on + timedelta(days=days)
        enrolment = await _enroll(publisher, watcher, referral.referral_id, referral.enrolled_on)
        referral.stage, referral.trainee_id = "enrolled", enrolment["trainee_id"]
    solutions = 0
    for referral, (days, outcome) in zip(accepted, EXITS, strict=False):
        assert referral.enrolled_on is not None and referral.trainee_id is not None
        decision = await _leave(publisher, watcher, referral.trainee_id,
                                referral.enrolled_on + timedelta(days=days), outcome)
        referral.stage = "exited"
        solutions += decision["category"] != "none"
    # A referral is received (for outcomes) the day it is decided: both steps share a day.
    expected = {
        "received": len(sent),
        "accepted": len(accepted),
        "enrolled": len(ENROLLED_AFTER),
        "exited": len(EXITS),
        "with_solution": solutions,
        "median_days": {"received_to_accepted": _median([0 for _ in accepted]),
                        "accepted_to_enrolled": _median(list(ENROLLED_AFTER)),
                        "enrolled_to_exited": _median([days for days, _ in EXITS])},
    }
    year = sent[0].decided_on.year
    await poll(lambda: _counted(stack, token, agency_id, year, expected, sent), timeout=60)
    return PartnerYear(agency_id, token, year, sent, expected)


async def _counted(stack: ServiceProcesses, token: str, agency_id: str, year: int,
                   expected: dict[str, Any], sent: list[Sent]) -> bool:
    """Outcomes counted every step, and referrals learnt every exit."""
    funnel = _funnel(stack, token, agency_id, year)
    listing = _listing(stack, token, agency_id)
    stages = {item["referral_id"]: item["stage"] for item in listing["items"]}
    return funnel["total"] == expected and stages == {s.referral_id: s.stage for s in sent}


def _funnel(stack: ServiceProcesses, token: str, agency_id: str | None,
            year: int) -> dict[str, Any]:
    params: dict[str, Any] = {"year": year}
    if agency_id:
        params["agency_id"] = agency_id
    answer = httpx.get(f"{stack.services['outcomes'].url}/reports/funnel", params=params,
                       headers=tokens.bearer(token), timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def _listing(stack: ServiceProcesses, token: str, agency_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{stack.services['referrals'].url}/referrals", timeout=10,
                       params={"agency_id": agency_id}, headers=tokens.bearer(token))
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def _counts_of(browser: webdriver.Chrome, selector: str) -> list[int]:
    return [int(element.get_attribute("data-count") or "-1")
            for element in browser.find_elements(By.CSS_SELECTOR, selector)]


def _rows(browser: webdriver.Chrome) -> dict[str, tuple[str | None, str | None, str]]:
    """referral id -> (status, stage, person) as the table shows them."""
    found = {}
    for row in browser.find_elements(By.CSS_SELECTOR, "#referrals tbody tr[data-referral]"):
        person = row.find_elements(By.CSS_SELECTOR, "td")[0]
        found[str(row.get_attribute("data-referral"))] = (
            row.get_attribute("data-status"), row.get_attribute("data-stage"), text_of(person))
    return found


def _sign_in(browser: webdriver.Chrome, console: Console, token: str) -> None:
    """Signs in and waits for the session cookie (the form's answer is a navigation)."""
    sign_in(browser, console, token)
    WebDriverWait(browser, 10).until(lambda b: b.get_cookie("e2c_session") is not None)


def _filtered_on(browser: webdriver.Chrome, stage: str) -> bool:
    """The page the filter form asked for is shown (its address and its form say `stage`)."""
    if f"status={stage}" not in browser.current_url:
        return False
    chosen = Select(browser.find_element(By.ID, "status")).first_selected_option
    return chosen.get_attribute("value") == stage


def _reasons_of(browser: webdriver.Chrome, referral_id: str) -> str:
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-referral='{referral_id}']")
    return text_of(row.find_elements(By.CSS_SELECTOR, "td")[3])


def test_a_partner_sees_its_funnel_and_referrals_as_the_services_and_topics_say(
    fresh_browser: webdriver.Chrome, console: Console, stack: ServiceProcesses,
    partner_year: PartnerYear,
) -> None:
    browser, year, agency_id = fresh_browser, partner_year.year, partner_year.agency_id
    _sign_in(browser, console, partner_year.token)
    started = time.monotonic()
    browser.get(f"{console.url}/partners?year={year}")  # the session knows its agency
    assert time.monotonic() - started < 1.0  # redirect, funnel and referrals within a second
    assert browser.current_url == f"{console.url}/partners/{agency_id}?year={year}"

    expected = _funnel(stack, partner_year.token, agency_id, year)["total"]
    assert expected == partner_year.funnel  # the service's JSON equals our own count
    assert _counts_of(browser, "#funnel td[data-count]") == [expected[s] for s in STEPS]
    assert _counts_of(browser, "#chart-funnel rect") == [expected[s] for s in STEPS]
    shown_medians = [browser.find_element(By.CSS_SELECTOR, f"#medians tr[data-median='{key}'] td")
                     .get_attribute("data-days") for key in expected["median_days"]]
    assert shown_medians == [str(v) if v is not None else ""
                             for v in expected["median_days"].values()]
    assert text_of(browser.find_element(
        By.CSS_SELECTOR, "#medians tr[data-median='accepted_to_enrolled'] td")) == "6\u00a0jours"

    assert _rows(browser) == {s.referral_id: (s.status, s.stage, s.name)
                              for s in partner_year.sent}
    reasons = {s.status: s.reasons for s in partner_year.sent}
    assert reasons["rejected"] == ["too_old"]
    assert reasons["pending_derogation"] == ["needs_derogation"]
    for referral in partner_year.sent:
        shown = {"too_old": "au-delà de l'âge", "needs_derogation": "dérogation d'âge nécessaire"}
        assert _reasons_of(browser, referral.referral_id) == (
            ", ".join(shown[code] for code in referral.reasons) or "–")
    screenshot(browser, "partners")
    browser.set_window_size(375, 800)
    screenshot(browser, "partners-phone")
    browser.set_window_size(1280, 1000)

    for stage in ("rejected", "enrolled", "pending_derogation"):
        Select(browser.find_element(By.ID, "status")).select_by_value(stage)
        browser.find_element(By.CSS_SELECTOR, "#filters button").click()
        WebDriverWait(browser, 10).until(lambda b, stage=stage: _filtered_on(b, stage))
        assert set(_rows(browser)) == {s.referral_id for s in partner_year.sent
                                       if s.stage == stage}

    exited = next(s for s in partner_year.sent if s.stage == "exited")
    browser.get(f"{console.url}/partners/{agency_id}/referrals/{exited.referral_id}"
                f"?year={year}")
    assert browser.find_element(By.ID, "stage").get_attribute("data-stage") == "exited"
    assert text_of(browser.find_element(By.ID, "person")) == exited.name
    history = [tuple(text_of(cell) for cell in row.find_elements(By.CSS_SELECTOR, "td")[1:3])
               for row in browser.find_elements(By.CSS_SELECTOR, "#history tbody tr")]
    assert history == [("Orientation", "Acceptée"), ("Entrée en formation", "Entrée en formation"),
                       ("Sortie", "Emploi durable")]
    screenshot(browser, "partners-referral")

    log = console.log_path.read_text(encoding="utf-8", errors="replace")
    assert not any(s.name.split()[-1] in log for s in partner_year.sent)


def test_another_agencys_page_answers_403_however_it_is_reached(
    fresh_browser: webdriver.Chrome, console: Console, partner_year: PartnerYear,
) -> None:
    client, answer = signin(console, tokens.ML_TOULOUSE)
    assert answer.status_code == 303
    refused = client.get("/partners/ft-toulouse")
    assert refused.status_code == 403 and str(escape(OTHER_AGENCY)) in refused.text
    theirs = partner_year.sent[0].referral_id
    assert client.get(f"/partners/{partner_year.agency_id}").status_code == 403
    # Named under the partner's own agency, another agency's referral is refused as well.
    assert client.get(f"/partners/ml-toulouse/referrals/{theirs}").status_code == 403
    ours, _ = signin(console, partner_year.token)
    assert ours.get("/partners/ml-toulouse").status_code == 403
    assert ours.get("/partners/ft-toulouse", params={"status": "rejected"}).status_code == 403

    browser = fresh_browser
    _sign_in(browser, console, tokens.ML_TOULOUSE)
    browser.get(f"{console.url}/partners/ft-toulouse")
    assert text_of(browser.find_element(By.ID, "error")) == OTHER_AGENCY
    assert browser.title.startswith("Erreur")
    screenshot(browser, "partners-403")


def test_the_since_filter_and_the_pages_reach_the_service(
    console: Console, partner_year: PartnerYear,
) -> None:
    client, _ = signin(console, partner_year.token)
    address = f"/partners/{partner_year.agency_id}"
    decided_on = partner_year.sent[0].decided_on
    before = client.get(address, params={"since": str(decided_on - timedelta(days=2))})
    assert all(f'data-referral="{s.referral_id}"' in before.text for s in partner_year.sent)
    after = client.get(address, params={"since": str(decided_on + timedelta(days=2))})
    assert after.status_code == 200 and 'data-referral="' not in after.text
    assert "Aucune orientation pour ces critères" in after.text
    beyond = client.get(address, params={"page": 2, "status": "exited"})
    assert beyond.status_code == 200 and 'data-referral="' not in beyond.text
    assert 'id="previous-page"' in beyond.text and "status=exited" in beyond.text


def test_outcomes_and_admin_open_any_agency_with_what_their_role_may_see(
    fresh_browser: webdriver.Chrome, console: Console, stack: ServiceProcesses,
    partner_year: PartnerYear,
) -> None:
    year, agency_id = partner_year.year, partner_year.agency_id
    _sign_in(fresh_browser, console, tokens.OUTCOMES)
    fresh_browser.get(f"{console.url}/partners?year={year}")
    assert fresh_browser.find_element(By.CSS_SELECTOR, f"#agencies tr[data-agency='{agency_id}']")
    screenshot(fresh_browser, "partners-pick")
    outcomes, answer = signin(console, tokens.OUTCOMES)
    assert answer.status_code == 303
    picker = outcomes.get("/partners", params={"year": year})
    assert picker.status_code == 200
    assert f'href="/partners/{agency_id}?year={year}"' in picker.text
    typed = outcomes.get("/partners", params={"agency_id": agency_id, "year": year},
                         follow_redirects=False)
    assert typed.headers["location"] == f"/partners/{agency_id}?year={year}"
    page = outcomes.get(f"/partners/{agency_id}", params={"year": year})
    assert page.status_code == 200
    for step in STEPS:
        assert f'data-step="{step}" data-count="{partner_year.funnel[step]}"' in page.text
    assert 'id="no-referrals"' in page.text  # outcomes reads funnels, not referrals

    admin, _ = signin(console, tokens.ADMIN)
    listed = admin.get(f"/partners/{agency_id}", params={"year": year})
    assert listed.status_code == 200
    assert all(f'data-referral="{s.referral_id}"' in listed.text for s in partner_year.sent)
    assert not any(s.name.split()[-1] in listed.text for s in partner_year.sent)


@pytest.mark.parametrize(("query", "named"), [
    ({"year": "20x6"}, "année"), ({"status": "lost-and-found"}, "statut"),
    ({"page": "0"}, "page"), ({"since": "2026-13-01"}, "depuis"),
    ({"page": "9" * 40}, "page"),
])
def test_bad_filters_are_a_400_page_naming_the_field(
    console: Console, partner_year: PartnerYear, query: dict[str, str], named: str,
) -> None:
    client, _ = signin(console, partner_year.token)
    answer = client.get(f"/partners/{partner_year.agency_id}", params=query)
    assert answer.status_code == 400
    message = answer.text.lower()
    assert named in message
    [value] = query.values()
    assert len(value) < 2 or value not in answer.text  # never echoed


def test_a_bad_agency_id_is_refused_without_echo(console: Console,
                                                 partner_year: PartnerYear) -> None:
    client, _ = signin(console, partner_year.token)
    assert client.get("/partners/bad%20id%3Cx%3E").status_code == 400
    assert client.get("/partners", params={"agency_id": "a b"}).status_code == 400
    assert client.get("/partners", params={"agency_id": "x" * 201}).status_code == 400
    assert client.get(f"/partners/{partner_year.agency_id}/referrals/%3Cx%3E").status_code == 404
