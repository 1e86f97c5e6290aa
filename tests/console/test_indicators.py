"""The indicators page in headless Chromium against the real stack: trainees enrolled and
leaving in two years nobody else uses, published through the broker; the page shows the
outcomes report of both years, each chart holds its table's numbers, and other roles are
refused."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from console.formats import integer, percent
from shared.contract import Topic
from shared.schools import load_schools
from tests import tokens
from tests.console.conftest import Console, screenshot, sign_in, signin, text_of
from tests.events import exit_submitted
from tests.infra import Publisher, TopicWatcher, learn_trainee

pytestmark = pytest.mark.infra

# Nobody else in the session stack enrolls anybody before 2015: 2011 and 2012 are ours,
# at schools open then (Alès 2010, Béziers 2010, Narbonne 2011).
YEAR, PREVIOUS = 2012, 2011
CATEGORY = {"qualifying_training": "training", "durable_employment": "employment",
            "short_employment": "dynamic", "iae": "dynamic", "pre_qualifying_training": "dynamic",
            "civic_service": "dynamic", "no_solution": "none", "dropout": "none", "other": "none"}
NBSP = "\u00a0"


@dataclass(frozen=True)
class Trainee:
    school: str
    enrolled_on: str
    agency_kind: str
    age: int
    rqth: bool
    qpv: bool
    has_work_experience: bool
    exited_on: str  # every trainee leaves: its exit decision shows the service has it all
    outcome: str
    satisfied: bool | None


PLAN = (
    Trainee("ales", "2011-02-01", "mission_locale", 17, False, True, False,
            "2011-09-30", "qualifying_training", True),
    Trainee("narbonne", "2011-03-01", "france_travail", 20, False, False, True,
            "2011-11-15", "no_solution", None),
    Trainee("ales", "2011-09-05", "mission_locale", 19, True, True, False,
            "2012-03-31", "durable_employment", True),
    Trainee("beziers", "2011-10-03", "spontaneous", 22, False, True, False,
            "2012-06-30", "short_employment", False),
    Trainee("ales", "2012-01-09", "mission_locale", 16, False, True, False,
            "2012-07-13", "civic_service", True),
    Trainee("narbonne", "2012-02-06", "mlds", 17, False, False, False,
            "2012-12-20", "qualifying_training", True),
    Trainee("narbonne", "2012-03-05", "france_travail", 24, True, False, True,
            "2012-10-01", "dropout", None),
    Trainee("beziers", "2012-04-02", "other", 21, False, True, True,
            "2013-01-31", "durable_employment", True),
    Trainee("ales", "2012-09-03", "mission_locale", 18, False, True, False,
            "2013-03-29", "iae", False),
    Trainee("beziers", "2012-11-05", "mission_locale", 25, False, False, True,
            "2012-12-21", "durable_employment", True),
)


def counted(plan: tuple[Trainee, ...], year: int) -> dict[str, Any]:
    """The figures of `year` counted from what the test published (the contract's rules:
    accompanied = enrolled by 31 December and not gone before 1 January)."""
    first, last = f"{year}-01-01", f"{year}-12-31"
    accompanied = [t for t in plan if t.enrolled_on <= last and t.exited_on >= first]
    entries = [t for t in plan if t.enrolled_on.startswith(str(year))]
    exits = [t for t in plan if t.exited_on.startswith(str(year))]
    categories = [CATEGORY[t.outcome] for t in exits]
    return {
        "accompanied": len(accompanied), "entries": len(entries), "exits": len(exits),
        "solutions": sum(category != "none" for category in categories),
        "exits_by_category": {c: categories.count(c)
                              for c in ("training", "employment", "dynamic", "none")},
        "satisfaction": {"answered": sum(t.satisfied is not None for t in exits),
                         "satisfied": sum(t.satisfied is True for t in exits)},
        "profile": {"age_at_entry_sum": sum(t.age for t in accompanied),
                    "minors": sum(t.age < 18 for t in accompanied),
                    "rqth": sum(t.rqth for t in accompanied),
                    "qpv_resident": sum(t.qpv for t in accompanied),
                    "no_work_experience": sum(not t.has_work_experience for t in accompanied)},
        "entries_by_agency_kind": {kind: sum(t.agency_kind == kind for t in entries) for kind in
                                   ("mission_locale", "france_travail", "mlds", "spontaneous",
                                    "other")},
    }


@pytest.fixture(scope="module")
async def published(publisher: Publisher, watcher: TopicWatcher) -> None:
    """PLAN through the broker; waits for every exit's decision (recorded only once the
    outcomes service has the trainee's enrollment, in the transaction of the exit)."""
    exits = []
    for trainee in PLAN:
        trainee_id = await learn_trainee(
            publisher, school_id=trainee.school, enrolled_on=trainee.enrolled_on,
            agency_kind=trainee.agency_kind, age_at_entry=trainee.age, rqth=trainee.rqth,
            qpv_resident=trainee.qpv, has_work_experience=trainee.has_work_experience)
        exits.append(exit_submitted(trainee_id, exited_on=trainee.exited_on,
                                    outcome=trainee.outcome, satisfied=trainee.satisfied))
    for event in exits:
        await publisher.send(Topic.EXITS_SUBMITTED, event, key=event["trainee_id"])
    for event in exits:
        [decision] = await watcher.wait_for(Topic.EXITS_DECIDED,
                                            request_event_id=event["event_id"], timeout=60)
        assert decision["status"] == "recorded", decision["reasons"]


def report(stack: Any, year: int) -> dict[str, Any]:
    answer = httpx.get(f"{stack.services['outcomes'].url}/reports/outcomes",
                       params={"year": year}, headers=tokens.bearer(tokens.OUTCOMES), timeout=10)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def cells_of(body: dict[str, Any], shown_schools: list[str]) -> dict[tuple[str, str], tuple]:
    """(table id, row key) -> (count, of) that the page's cell must hold, from the report."""
    exits, accompanied, entries = body["exits"], body["accompanied"], body["entries"]
    cells: dict[tuple[str, str], tuple] = {
        ("pathway", "accompanied"): (accompanied, None),
        ("pathway", "entries"): (entries, None),
        ("pathway", "exits"): (exits, None),
        ("solutions", "solutions"): (body["solutions"], exits),
        ("satisfaction", "satisfied"): (body["satisfaction"]["satisfied"],
                                        body["satisfaction"]["answered"]),
        ("satisfaction", "answered"): (body["satisfaction"]["answered"], exits),
        ("profile", "average_age"): (body["profile"]["age_at_entry_sum"], accompanied),
    }
    cells.update({("solutions", key): (count, exits)
                  for key, count in body["exits_by_category"].items()})
    cells.update({("outcomes", key): (count, exits)
                  for key, count in body["exits_by_outcome"].items()})
    cells.update({("profile", key): (count, accompanied) for key, count in body["profile"].items()
                  if key != "age_at_entry_sum"})
    cells.update({("agencies", key): (count, entries)
                  for key, count in body["entries_by_agency_kind"].items()})
    for school in shown_schools:
        counts = body["by_school"][school]
        cells.update({(f"school-{school}", key): (counts[key], None)
                      for key in ("accompanied", "entries", "exits")})
        cells[(f"school-{school}", "solutions")] = (counts["solutions"], counts["exits"])
    return cells


def numbers(element: Any) -> tuple[int, int | None]:
    of = element.get_attribute("data-of")
    return int(element.get_attribute("data-count")), int(of) if of else None


def shown(count: int, of: int | None, key: str) -> str:
    if of is None:
        return integer(count)
    if of == 0:
        return "—"  # a rate over nobody
    if key == "average_age":
        mean = (Decimal(count) / Decimal(of)).quantize(Decimal("0.1"), ROUND_HALF_UP)
        return f"{mean}".replace(".", ",") + f"{NBSP}ans"
    return percent(count, of)


def chart_numbers(browser: webdriver.Chrome, chart: str) -> dict[tuple[str, str], tuple]:
    return {(rect.get_attribute("data-key"), rect.get_attribute("data-year")): numbers(rect)
            for rect in browser.find_elements(By.CSS_SELECTOR, f"#{chart} rect[data-key]")}


def table_numbers(browser: webdriver.Chrome, table: str, skip: tuple[str, ...] = ()
                  ) -> dict[tuple[str, str], tuple]:
    return {(cell.find_element(By.XPATH, "..").get_attribute("data-key"),
             cell.get_attribute("data-year")): numbers(cell)
            for cell in browser.find_elements(By.CSS_SELECTOR, f"#{table} td[data-count]")
            if cell.find_element(By.XPATH, "..").get_attribute("data-key") not in skip}


def test_the_indicators_page_shows_both_years_reports_and_charts_hold_the_tables_numbers(
    fresh_browser: webdriver.Chrome, console: Console, published: None, stack: Any
) -> None:
    browser = fresh_browser
    reports = {year: report(stack, year) for year in (YEAR, PREVIOUS)}
    for year, body in reports.items():
        assert {key: body[key] for key in counted(PLAN, year)} == counted(PLAN, year)
    assert (reports[YEAR]["exits"], reports[YEAR]["solutions"]) == (6, 5)  # counted by hand

    sign_in(browser, console, tokens.OUTCOMES)
    assert browser.current_url == f"{console.url}/indicators"  # the role's first page
    browser.get(f"{console.url}/indicators?year={YEAR}")
    assert text_of(browser.find_element(By.TAG_NAME, "h1")) == f"Indicateurs {YEAR}"
    registry = load_schools()
    schools = [school for school, site in registry.items() if site.opened <= YEAR]
    cards = browser.find_elements(By.CSS_SELECTOR, "section.school")
    assert [card.get_attribute("data-school") for card in cards] == schools
    assert [text_of(card.find_element(By.TAG_NAME, "h3")) for card in cards] == [
        registry[school].name for school in schools]

    for year, body in reports.items():
        for (table, key), (count, of) in cells_of(body, schools).items():
            cell = browser.find_element(
                By.CSS_SELECTOR, f"#{table} tr[data-key='{key}'] td[data-year='{year}']")
            assert numbers(cell) == (count, of), (table, key, year)
            written = text_of(cell)
            assert written.startswith(shown(count, of, key)), (table, key, year, written)
    solutions = browser.find_element(By.CSS_SELECTOR, "#solutions tr[data-key='solutions']")
    assert [text_of(td) for td in solutions.find_elements(By.TAG_NAME, "td")] == [
        f"83{NBSP}%5 sur 6", f"50{NBSP}%1 sur 2", f"+33{NBSP}pts"]
    assert text_of(browser.find_element(
        By.CSS_SELECTOR, "#pathway tr[data-key='accompanied'] td.change")) == "+4"
    tiles = browser.find_elements(By.CSS_SELECTOR, "#headline .tile strong")
    assert [numbers(tile) for tile in tiles] == [
        cells_of(reports[YEAR], [])[cell] for cell in (
            ("pathway", "accompanied"), ("pathway", "entries"), ("pathway", "exits"),
            ("solutions", "solutions"), ("satisfaction", "satisfied"))]

    assert chart_numbers(browser, "chart-pathway") == table_numbers(browser, "pathway")
    assert chart_numbers(browser, "chart-profile") == table_numbers(
        browser, "profile", skip=("average_age",))
    assert chart_numbers(browser, "chart-agencies") == table_numbers(browser, "agencies")
    split = table_numbers(browser, "solutions", skip=("solutions",))  # (count, exits)
    stacked = chart_numbers(browser, "chart-solutions")  # (count, None): shares of the bar
    assert {place: count for place, (count, _) in split.items()} == {
        place: count for place, (count, _) in stacked.items()}
    accompanied = {}
    for school in schools:
        for (key, year), cell in table_numbers(browser, f"school-{school}").items():
            if key == "accompanied":
                accompanied[(school, year)] = cell
    assert chart_numbers(browser, "chart-schools") == accompanied

    screenshot(browser, "indicators")
    browser.set_window_size(375, 800)
    screenshot(browser, "indicators-phone")


def test_a_finance_token_cannot_open_the_indicators(
    fresh_browser: webdriver.Chrome, console: Console
) -> None:
    browser = fresh_browser
    sign_in(browser, console, tokens.FINANCE)
    browser.get(f"{console.url}/indicators?year={YEAR}")
    assert "ne permet pas" in text_of(browser.find_element(By.ID, "error"))
    assert not browser.find_elements(By.CSS_SELECTOR, "nav a[href='/indicators']")
    client, _ = signin(console, tokens.FINANCE)
    assert client.get("/indicators", params={"year": YEAR}).status_code == 403


def test_the_indicators_over_http_year_checks_and_the_first_year(console: Console) -> None:
    assert httpx.get(f"{console.url}/indicators").status_code in (303, 307)  # signed out
    client, answer = signin(console, tokens.OUTCOMES)
    assert answer.status_code == 303
    assert client.get("/indicators", params={"year": "20x9"}).status_code == 400
    first = client.get("/indicators", params={"year": 2000})  # no report of 1999 to ask for
    assert first.status_code == 200
    assert 'id="no-previous"' in first.text
    admin, _ = signin(console, tokens.ADMIN)
    assert admin.get("/indicators", params={"year": YEAR}).status_code == 200
