"""The school registry: a configuration file, so operations add sites without a code change."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DEFAULT_SCHOOLS_FILE = Path(__file__).with_name("schools.json")


@dataclass(frozen=True)
class School:
    id: str
    name: str
    opened: int


def load_schools(path: Path | None = None) -> dict[str, School]:
    """Schools by id, from `path` (E2C_SCHOOLS_FILE) or the registry shipped with the code."""
    raw = json.loads((path or DEFAULT_SCHOOLS_FILE).read_text(encoding="utf-8"))
    schools = [School(id=s["id"], name=s["name"], opened=int(s["opened"])) for s in raw["schools"]]
    return {school.id: school for school in schools}


@cache
def school_ids(path: Path | None = None) -> tuple[str, ...]:
    """The registry's ids in its order, read once per file (the HTTP reports list every
    school; a changed file is read again when the service restarts)."""
    return tuple(load_schools(path))


def open_in(schools: dict[str, School], year: int) -> list[str]:
    """The ids of the schools open during `year` (opened that year or before), sorted."""
    return sorted(school.id for school in schools.values() if school.opened <= year)
