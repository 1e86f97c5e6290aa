"""The partners page's content from the outcomes funnel and the referrals listing (pure: no
I/O). The numbers come from the services as they are: the console counts nothing itself."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from console import formats

STEPS = ("received", "accepted", "enrolled", "exited", "with_solution")
STEP_LABELS = {
    "received": "Reçues",
    "accepted": "Acceptées",
    "enrolled": "Entrées en formation",
    "exited": "Sorties",
    "with_solution": "Sorties avec solution",
}
# On the chart, beside its bars (the table beside it gives the long labels).
STEP_SHORT_LABELS = {"received": "Reçues", "accepted": "Acceptées", "enrolled": "Entrées",
                     "exited": "Sorties", "with_solution": "Avec solution"}
MEDIANS = (
    ("received_to_accepted", "Reçue → acceptée"),
    ("accepted_to_enrolled", "Acceptée → entrée en formation"),
    ("enrolled_to_exited", "Entrée en formation → sortie"),
)
# The referrals service's stages, in the order of the filter.
STAGE_LABELS = {
    "accepted": "Acceptée",
    "pending_derogation": "En attente de dérogation",
    "enrolled": "Entrée en formation",
    "exited": "Sortie",
    "rejected": "Refusée",
    "duplicate": "Doublon",
    "expired": "Expirée",
}
STATUS_LABELS = {**STAGE_LABELS, "received": "Reçue, pas encore décidée"}
REASON_LABELS = {
    "too_young": "trop jeune",
    "needs_derogation": "dérogation d'âge nécessaire",
    "too_old": "au-delà de l'âge",
    "has_qualification": "déjà diplômé·e",
    "in_school": "encore scolarisé·e",
    "unknown_school": "école inconnue",
    "derogation_refused": "dérogation refusée",
    "not_pending": "aucune dérogation attendue",
    "unknown_referral": "orientation inconnue",
    "referral_not_accepted": "orientation non acceptée",
    "already_enrolled": "déjà entré·e en formation",
}
OUTCOME_LABELS = {
    "qualifying_training": "Formation qualifiante",
    "durable_employment": "Emploi durable",
    "short_employment": "Emploi de courte durée",
    "iae": "Insertion par l'activité économique",
    "pre_qualifying_training": "Formation préqualifiante",
    "civic_service": "Service civique",
    "no_solution": "Sans solution",
    "dropout": "Abandon",
    "other": "Autre",
}
HISTORY_STATUS_LABELS = {**STATUS_LABELS, **OUTCOME_LABELS}  # an exit's status: its outcome
HISTORY_LABELS = {
    "referral": "Orientation",
    "resend": "Renvoi",
    "derogation": "Dérogation",
    "enrollment": "Entrée en formation",
    "exit": "Sortie",
    "erasure": "Effacement des données personnelles",
}
MAX_AGENCY_ID = 200
# Referral ids as the contract writes them; anything else names nothing here.
REFERRAL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

WIDTH, LABEL_W, VALUE_W, BAR_H, GAP = 520, 160, 64, 36, 10
FONT = 18  # read on a phone too: the 520-wide drawing is shown about 340 px wide there


def is_agency_id(text: str) -> bool:
    """An agency id as a partner role may hold it: printable, without spaces (nor a slash,
    which would end the page's address)."""
    return (0 < len(text) <= MAX_AGENCY_ID and text.isprintable()
            and not any(char.isspace() or char == "/" for char in text))


@dataclass
class FunnelStep:
    step: str
    label: str
    short_label: str
    count: int
    share: str  # of the received, `87 %`
    # The bar, centred in the plot so that the steps draw a funnel.
    x: float
    y: float
    width: float


@dataclass
class FunnelChart:
    steps: list[FunnelStep]
    width: int = WIDTH
    height: int = 0
    label_x: int = LABEL_W - 10
    value_x: int = WIDTH - VALUE_W + 10
    bar_height: int = BAR_H
    font: int = FONT


@dataclass
class Median:
    key: str
    label: str
    days: float | None
    text: str


@dataclass
class ReferralRow:
    referral_id: str
    status: str
    status_label: str
    stage: str
    stage_label: str
    reasons: list[str]  # French labels
    person: str  # the candidate's name for the sending agency; empty for other roles
    school_id: str
    referred_on: str
    enrolled_on: str
    exited_on: str
    erased: bool


@dataclass
class Listing:
    rows: list[ReferralRow]
    total: int
    page: int
    page_size: int
    next_page: int | None
    previous_page: int | None


@dataclass
class PartnersPage:
    agency_id: str
    year: int
    funnel: FunnelChart
    medians: list[Median]
    listing: Listing | None  # None: the role may not list referrals (outcomes)


def funnel_chart(counts: dict[str, Any]) -> FunnelChart:
    """The five steps as centred bars, each as wide as its count (the received: full)."""
    received = counts["received"]
    top = max([counts[step] for step in STEPS] + [1])
    span = WIDTH - LABEL_W - VALUE_W
    chart = FunnelChart(steps=[])
    for row, step in enumerate(STEPS):
        width = span * counts[step] / top
        chart.steps.append(FunnelStep(
            step, STEP_LABELS[step], STEP_SHORT_LABELS[step], counts[step],
            formats.percent(counts[step], received),
            LABEL_W + (span - width) / 2, row * (BAR_H + GAP), width))
    chart.height = len(STEPS) * (BAR_H + GAP) - GAP
    return chart


def medians(counts: dict[str, Any]) -> list[Median]:
    given = counts["median_days"]
    return [Median(key, label, given[key], formats.days(given[key])) for key, label in MEDIANS]


def person_of(summary: dict[str, Any]) -> str:
    candidate = summary.get("candidate")
    if not candidate:
        return ""
    if summary.get("erased"):
        return "données effacées"
    names = [candidate.get("first_name"), candidate.get("last_name")]
    return " ".join(name for name in names if name)


def referral_row(summary: dict[str, Any]) -> ReferralRow:
    status = str(summary["status"])
    stage = str(summary.get("stage", status))
    return ReferralRow(
        referral_id=summary["referral_id"],
        status=status,
        status_label=STATUS_LABELS.get(status, status),
        stage=stage,
        stage_label=STATUS_LABELS.get(stage, stage),
        reasons=[REASON_LABELS.get(code, code) for code in summary.get("reasons", [])],
        person=person_of(summary),
        school_id=str(summary.get("school_id", "")),
        referred_on=formats.iso_day(summary.get("referred_on")),
        enrolled_on=formats.iso_day(summary.get("enrolled_on")),
        exited_on=formats.iso_day(summary.get("exited_on")),
        erased=bool(summary.get("erased")),
    )


def listing(answer: dict[str, Any]) -> Listing:
    page = int(answer["page"])
    return Listing(
        rows=[referral_row(item) for item in answer["items"]],
        total=int(answer["total"]),
        page=page,
        page_size=int(answer["page_size"]),
        next_page=answer["next_page"],
        previous_page=page - 1 if page > 1 else None,
    )


def partners_page(agency_id: str, funnel: dict[str, Any],
                  referrals: dict[str, Any] | None) -> PartnersPage:
    """`funnel`: the service's funnel asked for this one agency, so its total is the
    agency's; `referrals`: a page of its listing, None when the role may not list them."""
    counts = funnel["total"]
    return PartnersPage(
        agency_id=agency_id,
        year=int(funnel["year"]),
        funnel=funnel_chart(counts),
        medians=medians(counts),
        listing=listing(referrals) if referrals is not None else None,
    )


@dataclass
class HistoryRow:
    kind: str
    status: str
    reasons: list[str]
    at: str


@dataclass
class ReferralPage:
    row: ReferralRow
    history: list[HistoryRow]
    decided: bool  # False: received over HTTP, not decided yet


def referral_page(detail: dict[str, Any]) -> ReferralPage:
    if "stage" not in detail:  # received over HTTP, not decided yet: no history
        row = referral_row({**detail, "stage": detail["status"]})
        return ReferralPage(row, [], decided=False)
    return ReferralPage(
        referral_row(detail),
        [HistoryRow(HISTORY_LABELS.get(entry["kind"], entry["kind"]),
                    HISTORY_STATUS_LABELS.get(entry["status"], entry["status"]),
                    [REASON_LABELS.get(code, code) for code in entry["reasons"]],
                    formats.moment(entry["at"]))
         for entry in detail.get("history", [])],
        decided=True,
    )


def agencies_of(funnel: dict[str, Any]) -> list[tuple[str, int]]:
    """The agencies with referrals in the funnel's year, and how many each received."""
    return [(agency_id, int(counts["received"]))
            for agency_id, counts in funnel["by_agency"].items()]
