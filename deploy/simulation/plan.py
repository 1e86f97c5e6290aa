"""A realistic network year, planned in advance with its own ground truth.

Everything here is pure once the configuration is read: a seed gives the same year. The
expected figures are computed from the plan itself (who is eligible, who enrolls, what is
granted, who leaves how), never from the services, so that comparing them with the services'
reports is a real check. The configuration is the services' own: the school registry
(`E2C_SCHOOLS_FILE`: only the schools open in the year take trainees) and the aid rate table
(`E2C_AID_RULES_FILE`: each meal request priced at the rate in force on its period_start, none
planned before the first rate), so that any year the plan accepts checks out.
"""

from __future__ import annotations

import calendar
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from shared.aid_rules import AidRules, load_rules
from shared.contract import OUTCOME_CATEGORY, AgencyKind, AidKind, Outcome, OutcomeCategory
from shared.schools import School, load_schools, open_in
from shared.settings import Settings

AGENCY_SHARES = [  # Missions Locales 56 %, spontaneous 35 %, the rest
    (AgencyKind.MISSION_LOCALE, 56), (AgencyKind.SPONTANEOUS, 35),
    (AgencyKind.FRANCE_TRAVAIL, 5), (AgencyKind.MLDS, 3), (AgencyKind.OTHER, 1),
]
CATEGORY_SHARES = [  # 2024: 28 % training, 27 % employment, 32 % dynamic, 13 % none
    (OutcomeCategory.TRAINING, 28), (OutcomeCategory.EMPLOYMENT, 27),
    (OutcomeCategory.DYNAMIC, 32), (OutcomeCategory.NONE, 13),
]
OUTCOMES_OF = {
    category: [o for o, c in OUTCOME_CATEGORY.items() if c is category]
    for category in OutcomeCategory
}
FIRST_NAMES = ["Inès", "Léa", "Yanis", "Chloé", "Mathéo", "Sarah", "Noah", "Zoé", "Rayan",
               "Jade", "Lucas", "Maëlys", "Adam", "Manon", "Théo", "Camille", "Enzo", "Anaïs"]
LAST_NAMES = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
              "Leroy", "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "García", "Fournier"]
INELIGIBLE = ("too_young", "too_old", "has_qualification", "in_school", "unknown_school")


@dataclass
class Person:
    first_name: str
    last_name: str
    birth_date: date
    agency_kind: AgencyKind
    agency_id: str
    school_id: str
    rqth: bool = False
    qpv_resident: bool = False
    has_work_experience: bool = False
    qualification: str = "none"
    in_school: bool = False


@dataclass
class Referral:
    referral_id: str
    person: Person
    referred_on: date
    expected_status: str
    expected_reasons: list[str] = field(default_factory=list)
    derogation_granted: bool | None = None  # pending ones: what the school decides
    duplicate_of: str | None = None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    derogation_event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def event(self) -> dict[str, Any]:
        p = self.person
        return {
            "event_id": self.event_id,
            "occurred_at": _moment(self.referred_on, 10),
            "schema_version": 1,
            "referral_id": self.referral_id,
            "agency": {"kind": p.agency_kind.value, "id": p.agency_id, "name": p.agency_id},
            "school_id": p.school_id,
            "candidate": {
                "first_name": p.first_name, "last_name": p.last_name,
                "birth_date": p.birth_date.isoformat(), "email": None, "phone": None,
                "highest_qualification": p.qualification, "in_school": p.in_school,
                "has_work_experience": p.has_work_experience, "rqth": p.rqth,
                "qpv_resident": p.qpv_resident,
            },
        }


@dataclass
class Aid:
    request_id: str
    kind: AidKind
    quantity: int
    amount_cents: int | None
    period_start: date
    period_end: date
    expected_reason: str | None = None  # None: granted
    meal_rate_cents: int | None = None  # meals granted: the rate in force on period_start
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def granted_cents(self) -> int:
        if self.kind is AidKind.MEALS:
            assert self.meal_rate_cents is not None
            return self.quantity * self.meal_rate_cents
        assert self.amount_cents is not None
        return self.amount_cents

    def event(self, trainee_id: str) -> dict[str, Any]:
        return {
            "event_id": self.event_id, "occurred_at": _moment(self.period_start, 9),
            "schema_version": 1, "request_id": self.request_id, "trainee_id": trainee_id,
            "kind": self.kind.value, "quantity": self.quantity,
            "amount_cents": self.amount_cents, "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
        }


@dataclass
class Exit:
    exited_on: date
    outcome: Outcome
    satisfied: bool | None
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Trainee:
    """An accepted referral that enrolls: its entry, its aids, its exit (if in the year)."""

    referral: Referral
    enrolled_on: date
    age_at_entry: int
    aids: list[Aid] = field(default_factory=list)
    exit: Exit | None = None
    enrollment_event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class YearPlan:
    year: int
    referrals: list[Referral]
    duplicates: list[Referral]
    trainees: list[Trainee]
    envelopes: dict[AidKind, int]

    @property
    def year_start(self) -> date:
        return date(self.year, 1, 1)

    @property
    def derogations(self) -> list[Referral]:
        return [r for r in self.referrals if r.derogation_granted is not None]

    # --- the ground truth -----------------------------------------------------------------

    def expected_decisions(self) -> Counter[str]:
        """Final referral statuses (after derogations), duplicates included."""
        final = Counter[str]()
        for referral in [*self.referrals, *self.duplicates]:
            status = referral.expected_status
            if referral.derogation_granted is not None:
                status = "accepted" if referral.derogation_granted else "rejected"
            final[status] += 1
        return final

    def expected_finance(self) -> dict[str, Any]:
        by_kind: dict[str, dict[str, int]] = {
            k.value: {"granted": 0, "rejected": 0, "quantity": 0, "amount_cents": 0}
            for k in AidKind
        }
        by_kind[AidKind.CHILDCARE.value]["trainees"] = 0
        by_school: dict[str, dict[str, int]] = {}
        by_month = {f"{self.year}-{m:02d}": {k.value: 0 for k in AidKind} for m in range(1, 13)}
        childcare_trainees = set()
        for trainee in self.trainees:
            school = trainee.referral.person.school_id
            for aid in trainee.aids:
                kind = by_kind[aid.kind.value]
                if aid.expected_reason is not None:
                    kind["rejected"] += 1
                    continue
                kind["granted"] += 1
                kind["quantity"] += aid.quantity
                kind["amount_cents"] += aid.granted_cents
                row = by_school.setdefault(school, {k.value: 0 for k in AidKind})
                row[aid.kind.value] += aid.granted_cents
                by_month[f"{aid.period_start:%Y-%m}"][aid.kind.value] += aid.granted_cents
                if aid.kind is AidKind.CHILDCARE:
                    childcare_trainees.add(trainee.referral.referral_id)
        by_kind[AidKind.CHILDCARE.value]["trainees"] = len(childcare_trainees)
        budgets = {
            k.value: {"committed_cents": by_kind[k.value]["amount_cents"]} for k in AidKind
        }
        return {"by_kind": by_kind, "by_school": by_school, "by_month": by_month,
                "budgets": budgets}

    def expected_outcomes(self) -> dict[str, Any]:
        exits = [t for t in self.trainees if t.exit is not None]
        by_school: dict[str, dict[str, int]] = {}
        for trainee in self.trainees:
            row = by_school.setdefault(trainee.referral.person.school_id,
                                       {"accompanied": 0, "entries": 0, "exits": 0,
                                        "solutions": 0})
            row["accompanied"] += 1
            row["entries"] += 1
            if trainee.exit is not None:
                row["exits"] += 1
                row["solutions"] += int(_solution(trainee.exit))
        people = [t.referral.person for t in self.trainees]
        return {
            "accompanied": len(self.trainees),
            "entries": len(self.trainees),
            "exits": len(exits),
            "exits_by_outcome": {o.value: sum(t.exit.outcome is o for t in exits if t.exit)
                                 for o in Outcome},
            "exits_by_category": {
                c.value: sum(OUTCOME_CATEGORY[t.exit.outcome] is c for t in exits if t.exit)
                for c in OutcomeCategory
            },
            "solutions": sum(_solution(t.exit) for t in exits if t.exit),
            "satisfaction": {
                "answered": sum(t.exit.satisfied is not None for t in exits if t.exit),
                "satisfied": sum(t.exit.satisfied is True for t in exits if t.exit),
            },
            "profile": {
                "age_at_entry_sum": sum(t.age_at_entry for t in self.trainees),
                "minors": sum(t.age_at_entry < 18 for t in self.trainees),
                "rqth": sum(p.rqth for p in people),
                "qpv_resident": sum(p.qpv_resident for p in people),
                "no_work_experience": sum(not p.has_work_experience for p in people),
            },
            "entries_by_agency_kind": {
                k.value: sum(p.agency_kind is k for p in people) for k in AgencyKind
            },
            "by_school": by_school,
        }

    def input_count(self) -> int:
        return (len(self.referrals) + len(self.duplicates) + len(self.derogations)
                + len(self.trainees) + sum(len(t.aids) for t in self.trainees)
                + sum(t.exit is not None for t in self.trainees))


def _solution(exit_: Exit) -> bool:
    return OUTCOME_CATEGORY[exit_.outcome] is not OutcomeCategory.NONE


def _moment(day: date, hour: int) -> str:
    return datetime.combine(day, time(hour), tzinfo=UTC).isoformat()


# --- generation --------------------------------------------------------------------------------


class YearNotSimulable(ValueError):
    """A year the configuration cannot give a realistic plan for (no school open yet)."""


class Planner:
    """Draws a year: N trainees and the referrals, aids and exits around them, in the schools
    open that year and with the aid rules in force."""

    def __init__(self, year: int, trainees: int, seed: int, schools: dict[str, School],
                 rules: AidRules) -> None:
        self.year = year
        self.size = trainees
        self.rng = random.Random(seed)
        self.schools = open_in(schools, year)
        if not self.schools:
            first = min((school.opened for school in schools.values()), default=None)
            raise YearNotSimulable(
                f"cannot simulate {year}: no school of the registry was open yet"
                + (f", the first opened in {first}" if first is not None else ", it is empty"))
        self.unknown_school = "paris-nord"  # not in the network: refused unknown_school
        while self.unknown_school in schools:
            self.unknown_school += "-bis"
        self.rules = rules
        # Ids and names carry a tag of this run (not of the seed): the same seed replayed on
        # a stack that already saw it makes new people, not duplicates of the first run.
        self.run_tag = uuid.uuid4().hex[:8]
        self.counter = 0
        self.people = 0

    def plan(self) -> YearPlan:
        trainees = [self._trainee() for _ in range(self.size)]
        refusals = [self._ineligible() for _ in range(max(1, self.size * 8 // 100))]
        refused_derogations = [self._derogation(False) for _ in range(max(1, self.size // 50))]
        dropped = [self._dropped() for _ in range(max(1, self.size * 5 // 100))]
        duplicates = [self._duplicate(t.referral)
                      for t in self.rng.sample(trainees, max(1, self.size * 3 // 100))]
        referrals = [t.referral for t in trainees] + refusals + refused_derogations + dropped
        self.rng.shuffle(referrals)
        planned = YearPlan(self.year, referrals, duplicates, trainees, {})
        granted = planned.expected_finance()["by_kind"]
        planned.envelopes = {  # generous: the follow-up shows, nothing is refused for budget
            kind: max(100_00, granted[kind.value]["amount_cents"] * 5 // 4) for kind in AidKind
        }
        return planned

    # --- people and referrals -------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.year}-{self.run_tag}-{self.counter:06d}"

    def _entry_age(self) -> int:
        if self.rng.random() < 0.34:
            return self.rng.choice((16, 17, 17))
        return self.rng.randint(18, 23)

    def _person(self, age: int, on: date) -> Person:
        self.people += 1
        kind = self.rng.choices([k for k, _ in AGENCY_SHARES], [w for _, w in AGENCY_SHARES])[0]
        agency_id = f"{kind.value.replace('_', '-')}-{self.rng.randint(1, 6)}"
        return Person(
            first_name=self.rng.choice(FIRST_NAMES),
            last_name=f"{self.rng.choice(LAST_NAMES)}-{self.run_tag}-{self.people}",
            birth_date=self._birth_date(age, on),
            agency_kind=kind,
            agency_id=agency_id,
            school_id=self.rng.choice(self.schools),
            rqth=self.rng.random() < 0.10,
            qpv_resident=self.rng.random() < 1 / 3,
            has_work_experience=self.rng.random() < 0.09,
        )

    def _birth_date(self, age: int, on: date) -> date:
        """Born so as to be `age` on `on` and for the 60 days before it (referral, entry)."""
        last_birthday = on - timedelta(days=self.rng.randint(60, 300))
        return date(last_birthday.year - age, last_birthday.month, min(last_birthday.day, 28))

    def _referral(self, person: Person, referred_on: date, status: str,
                  reasons: list[str] | None = None) -> Referral:
        return Referral(self._next_id("SIM"), person, referred_on, status, reasons or [])

    def _date_in_year(self) -> date:
        return date(self.year, 1, 1) + timedelta(days=self.rng.randint(0, 330))

    def _dropped(self) -> Referral:
        """Accepted, but the young person never comes to the school."""
        on = self._date_in_year()
        return self._referral(self._person(self._entry_age(), on), on, "accepted")

    def _ineligible(self) -> Referral:
        reason = self.rng.choice(INELIGIBLE)
        on = self._date_in_year()
        ages = {"too_young": 15, "too_old": 31}
        person = self._person(ages.get(reason, self._entry_age()), on)
        if reason == "has_qualification":
            person.qualification = self.rng.choice(("cap_bep", "bac", "post_bac"))
        elif reason == "in_school":
            person.in_school = True
        elif reason == "unknown_school":
            person.school_id = self.unknown_school
        return self._referral(person, on, "rejected", [reason])

    def _derogation(self, granted: bool) -> Referral:
        on = self._date_in_year()
        referral = self._referral(self._person(self.rng.randint(26, 29), on), on,
                                  "pending_derogation", ["needs_derogation"])
        referral.derogation_granted = granted
        return referral

    def _duplicate(self, original: Referral) -> Referral:
        person = Person(**{**original.person.__dict__})
        person.first_name = f"  {person.first_name.upper()} "
        person.agency_kind = AgencyKind.FRANCE_TRAVAIL
        person.agency_id = "france-travail-dup"
        return Referral(self._next_id("DUP"), person, original.referred_on + timedelta(days=3),
                        "duplicate", duplicate_of=original.referral_id)

    # --- trainees, aids, exits ------------------------------------------------------------

    def _trainee(self) -> Trainee:
        enrolled_on = date(self.year, 1, 2) + timedelta(days=self.rng.randint(0, 330))
        referred_on = enrolled_on - timedelta(days=self.rng.randint(5, 40))
        derogation = self.rng.random() < 0.04
        age = self.rng.randint(26, 29) if derogation else self._entry_age()
        referral = self._referral(self._person(age, enrolled_on), referred_on,
                                  "pending_derogation" if derogation else "accepted",
                                  ["needs_derogation"] if derogation else [])
        if derogation:
            referral.derogation_granted = True
        trainee = Trainee(referral, enrolled_on, age)
        trainee.exit = self._exit(enrolled_on)
        trainee.aids = self._aids(trainee)
        return trainee

    def _exit(self, enrolled_on: date) -> Exit | None:
        exited_on = enrolled_on + timedelta(days=self.rng.randint(60, 300))
        if exited_on.year != self.year or self.rng.random() < 0.2:
            return None
        category = self.rng.choices([c for c, _ in CATEGORY_SHARES],
                                    [w for _, w in CATEGORY_SHARES])[0]
        answered = self.rng.random() < 0.95
        satisfied = (self.rng.random() < 0.90) if answered else None
        return Exit(exited_on, self.rng.choice(OUTCOMES_OF[category]), satisfied)

    def _aids(self, trainee: Trainee) -> list[Aid]:
        start = trainee.enrolled_on
        end = trainee.exit.exited_on if trainee.exit else date(self.year, 12, 31)
        aids: list[Aid] = []
        if self.rng.random() < 500 / 1750:
            handover = self._day_between(start, end)
            aids.append(Aid(self._next_id("LAP"), AidKind.LAPTOP, 1,
                            self.rng.randrange(35000, 55000, 100), handover, handover))
            if self.rng.random() < 0.05:  # asked twice: refused
                aids.append(Aid(self._next_id("LAP"), AidKind.LAPTOP, 1, 40000, handover,
                                handover, "laptop_already_granted"))
        if self.rng.random() < 0.6:
            aids.extend(self._meals(start, end))
            if self.rng.random() < 0.03:  # asked before the scheme existed: refused
                aids.extend(self._meals_before_the_scheme(start, end))
        if self.rng.random() < 56 / 1750:
            aids.extend(self._childcare(start, end))
        return aids

    def _meals(self, start: date, end: date) -> list[Aid]:
        """A request a month, from the first meal rate on (no scheme, no request before)."""
        since = self.rules.meals_since
        if since is None:
            return []
        meals = []
        for month_start, month_end in _months_between(max(start, since), end):
            days = (month_end - month_start).days + 1
            quantity = min(days, self.rng.randint(3, 7))
            meals.append(Aid(self._next_id("MEA"), AidKind.MEALS, quantity, None,
                             month_start, month_end,
                             meal_rate_cents=self.rules.meal_rate_on(month_start)))
        if meals and self.rng.random() < 0.03:  # more meals than days: refused
            first = meals[0]
            meals.append(Aid(self._next_id("MEA"), AidKind.MEALS,
                             (first.period_end - first.period_start).days + 2, None,
                             first.period_start, first.period_end, "too_many_meals"))
        return meals

    def _meals_before_the_scheme(self, start: date, end: date) -> list[Aid]:
        """One month of meals asked before the first rate: refused invalid_period."""
        since = self.rules.meals_since
        last = end if since is None else min(end, since - timedelta(days=1))
        months = _months_between(start, last)
        if not months:
            return []
        month_start, month_end = months[0]
        return [Aid(self._next_id("MEA"), AidKind.MEALS, min(5, (month_end - month_start).days + 1),
                    None, month_start, month_end, "invalid_period")]

    def _childcare(self, start: date, end: date) -> list[Aid]:
        cap = self.rules.childcare_monthly_cap_cents  # each request is one calendar month
        care = [Aid(self._next_id("CHI"), AidKind.CHILDCARE, 1,
                    self.rng.randrange(min(10000, cap), cap + 1, 100), s, e)
                for s, e in _months_between(start, end)]
        if care:
            s, e = care[0].period_start, care[0].period_end
            care.append(Aid(self._next_id("CHI"), AidKind.CHILDCARE, 1,
                            cap + 1, s, e, "over_childcare_cap"))
        return care

    def _day_between(self, start: date, end: date) -> date:
        return start + timedelta(days=self.rng.randint(0, max(0, (end - start).days)))


def _months_between(start: date, end: date) -> list[tuple[date, date]]:
    """The calendar-month slices of [start, end]."""
    slices = []
    current = start
    while current <= end:
        last_day = date(current.year, current.month,
                        calendar.monthrange(current.year, current.month)[1])
        slices.append((current, min(last_day, end)))
        current = last_day + timedelta(days=1)
    return slices


def plan_year(year: int, trainees: int, seed: int, settings: Settings | None = None) -> YearPlan:
    """The year planned with the services' own configuration: the school registry and the
    aid rate table that `settings` (the environment by default) point them to. Raises
    YearNotSimulable for a year no school was open in."""
    settings = settings or Settings()
    schools = load_schools(settings.schools_file)
    rules = load_rules(settings.aid_rules_file)
    return Planner(year, trainees, seed, schools, rules).plan()
