"""What the services' reports have in common: the `year` they are asked for (HTTP or the
command line), the one-snapshot engine their store reads go through, and the plain-text
tables of the command line.

The services never import each other (they meet on Kafka only): what two of them need
lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Query
from sqlalchemy import Engine

from shared.http import bounded_int
from shared.params import ASCII_DIGITS

FIRST_YEAR, LAST_YEAR = 2000, 2100


def parse_year(value: str | None) -> int:
    """A report year from the command line: an integer from 2000 to 2100, else ValueError
    (readable, never the value given). Over HTTP, `year_param` is FastAPI's to check."""
    expected = f"an integer from {FIRST_YEAR} to {LAST_YEAR}"
    if value is None or value == "":
        raise ValueError(f"year is required: {expected}")
    year = bounded_int(value, FIRST_YEAR, LAST_YEAR)
    if year is None:
        raise ValueError(f"invalid year: expected {expected}")  # never the value given
    return year


def year_param(
    year: Annotated[int, Query(ge=FIRST_YEAR, le=LAST_YEAR, description="the year"),
                    ASCII_DIGITS],
) -> int:
    """A report's `year` query parameter, a route's dependency
    (`year: Annotated[int, Depends(year_param)]`), validated by FastAPI: missing, empty or
    not an integer from 2000 to 2100 is a 422 ("year is required: an integer from
    2000 to 2100", "invalid year: expected ...", worded by `shared.params`)."""
    return year


def report_engine(engine: Engine) -> Engine:
    """On PostgreSQL the report's few queries read one snapshot (REPEATABLE READ), so that
    the totals by kind, school and month agree with each other. SQLite already serialises."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right-aligned,
    a line of dashes under the headers, two spaces between columns."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    return [line(cells[0]), line(["-" * width for width in widths]), *map(line, cells[1:])]
