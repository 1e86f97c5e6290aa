"""French formats as fr-FR writes them: `1 234,56 €` (narrow no-break space between
thousands, no-break space before the sign), `87 %`, `02/12/2026`, months `mars 2024`."""

from __future__ import annotations

import math
from datetime import datetime
from fractions import Fraction
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
THOUSANDS = "\u202f"  # narrow no-break space, as Intl.NumberFormat("fr-FR") writes it
BEFORE_SIGN = "\u00a0"
MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
          "septembre", "octobre", "novembre", "décembre")
SHORT_MONTHS = ("janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août",
                "sept.", "oct.", "nov.", "déc.")


def integer(value: int) -> str:
    """`1 234 567` with narrow no-break spaces."""
    sign = "-" if value < 0 else ""
    return sign + f"{abs(value):,}".replace(",", THOUSANDS)


def euros(cents: int) -> str:
    """`1 234,56 €` from integer cents."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}{integer(whole)},{rest:02d}{BEFORE_SIGN}€"


def percent(numerator: int, denominator: int) -> str:
    """`87 %` (rounded half up), `–` without a denominator."""
    if denominator == 0:
        return "–"
    return f"{(200 * numerator + denominator) // (2 * denominator)}{BEFORE_SIGN}%"


def day(moment: datetime) -> str:
    """`02/12/2026`, the day in Paris."""
    return moment.astimezone(PARIS).strftime("%d/%m/%Y")


def month(key: str | None) -> str:
    """`mars 2024` from `2024-03`; `–` for None."""
    if not key:
        return "–"
    year, number = key.split("-")
    return f"{MONTHS[int(number) - 1]} {year}"


def short_month(key: str) -> str:
    """`mars` from `2024-03` (chart axes)."""
    return SHORT_MONTHS[int(key.split("-")[1]) - 1]


def half_up(value: Fraction, places: int = 0) -> Fraction:
    """`value` rounded to `places` decimals, halves away from zero (2,5 -> 3; -2,5 -> -3)."""
    scale = 10**places
    rounded = Fraction(math.floor(abs(value) * scale + Fraction(1, 2)), scale)
    return rounded if value >= 0 else -rounded


def decimal(value: Fraction, places: int = 1) -> str:
    """`19,5`: a decimal number with a comma, rounded half up."""
    rounded = half_up(value, places)
    sign = "-" if rounded < 0 else ""
    whole, rest = divmod(abs(rounded) * 10**places, 10**places)
    return f"{sign}{integer(int(whole))},{int(rest):0{places}d}" if places else (
        f"{sign}{integer(int(whole))}")
def iso_day(key: str | None) -> str:
    """`02/12/2026` from `2026-12-02`; `–` for None."""
    if not key:
        return "–"
    year, number, day_of_month = key[:10].split("-")
    return f"{day_of_month}/{number}/{year}"


def days(value: float | None) -> str:
    """`12 jours`, `12,5 jours`, `1 jour`; `–` for None (nobody got that far)."""
    if value is None:
        return "–"
    number = f"{value:.1f}".rstrip("0").rstrip(".").replace(".", ",")
    return f"{number}{BEFORE_SIGN}{'jour' if abs(value) < 2 else 'jours'}"
def clock(moment: datetime) -> str:
    """`14:03:27`, the time in Paris."""
    return moment.astimezone(PARIS).strftime("%H:%M:%S")


def moment(text: str | None) -> str:
    """`02/12/2026 14:03:27` (Paris) from an ISO 8601 time with its offset; `–` without."""
    if not text:
        return "–"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return "–"
    if parsed.tzinfo is None:
        return "–"  # a time without its offset cannot be placed in Paris
    return f"{day(parsed)} {clock(parsed)}"


def seconds(value: float | None) -> str:
    """An age as people read it: `4,2 s`, `3 min 05 s`, `2 h 07 min`; `–` for None."""
    if value is None:
        return "–"
    if value < 60:
        return f"{value:.1f}".replace(".", ",") + f"{BEFORE_SIGN}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}{BEFORE_SIGN}min {whole % 60:02d}{BEFORE_SIGN}s"
    return f"{whole // 3600}{BEFORE_SIGN}h {whole % 3600 // 60:02d}{BEFORE_SIGN}min"
