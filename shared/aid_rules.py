"""The aid rate table: a configuration file (`E2C_AID_RULES_FILE`), read by the aids service
that applies it and by the simulation that must price a year exactly as the service does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DEFAULT_RATES_FILE = Path(__file__).with_name("aid_rates.json")


@dataclass(frozen=True)
class AidRules:
    """Configuration: the dated meal rates and the childcare monthly cap."""

    meal_rates: tuple[tuple[date, int], ...]  # (in force from, cents), sorted by date
    childcare_monthly_cap_cents: int

    def meal_rate_on(self, day: date) -> int | None:
        """The rate in force on `day`: a later revaluation never changes earlier grants."""
        rate = None
        for since, cents in self.meal_rates:
            if since <= day:
                rate = cents
        return rate

    @property
    def meals_since(self) -> date | None:
        """The first day a meal can be granted (the first rate's): None without any rate."""
        return self.meal_rates[0][0] if self.meal_rates else None


def load_rules(path: Path | None = None) -> AidRules:
    """The rules from `path` (E2C_AID_RULES_FILE) or the table shipped with the code."""
    raw = json.loads((path or DEFAULT_RATES_FILE).read_text(encoding="utf-8"))
    rates = sorted(
        (date.fromisoformat(entry["from"]), int(entry["cents"])) for entry in raw["meal_rates"]
    )
    return AidRules(tuple(rates), int(raw["childcare_monthly_cap_cents"]))
