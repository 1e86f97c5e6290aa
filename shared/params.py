"""Request parameters as FastAPI validates them, and the answer to a request that gets one
wrong: a 4xx `{"detail": ...}` naming each wrong parameter and what it takes, never the
value sent (FastAPI's own answer echoes it as `input`; a value may be personal data, or
script aimed at whoever reads the answer).

What a parameter takes is said from its declaration: an integer's bounds
(`Query(ge=1, le=500)`), an enum's values, else the `Expected` it carries. For example:

    page: Annotated[int, Query(ge=1, le=10_000_000), ASCII_DIGITS] = 1
    -> 422 {"detail": "invalid page: expected an integer from 1 to 10000000"}
    year: Annotated[int, Query(ge=2000, le=2100), ASCII_DIGITS]  (missing or empty)
    -> 422 {"detail": "year is required: an integer from 2000 to 2100"}

Errors in a JSON body name the field's path (`candidate.birth_date`) and, where pydantic's
message cannot quote the input, that message.
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from fastapi.dependencies.utils import get_flat_params
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BeforeValidator
from starlette.requests import Request

PARAMETER_SOURCES = frozenset({"query", "path", "header", "cookie"})
INVALID = "invalid {name}: expected {expected}"
REQUIRED = "{name} is required: {expected}"

# pydantic error types whose message never quotes the input: it names the expected type or
# bound only. Others (a UUID's parse error quotes the bad character, a union's tag the tag
# sent, a validator's ValueError whatever its author wrote) are answered without a message.
_QUOTE_FREE_ERRORS = frozenset({
    "missing", "extra_forbidden", "int_parsing", "int_parsing_size", "int_from_float",
    "float_parsing", "bool_parsing", "greater_than", "greater_than_equal", "less_than",
    "less_than_equal", "multiple_of", "finite_number", "string_too_short", "string_too_long",
    "too_short", "too_long", "string_pattern_mismatch", "enum", "literal_error",
    "date_from_datetime_inexact", "timezone_aware", "timezone_naive", "decimal_max_digits",
    "decimal_max_places", "decimal_whole_digits",
})


@dataclass(frozen=True)
class Expected:
    """A parameter's metadata (`Annotated[str, Query(), Expected("printable characters")]`):
    what it takes, in words, when its type does not say it, and how a bad value is answered
    (`status`, and `wording` with `{name}` and `{expected}`)."""

    text: str | None = None
    status: int = 422
    wording: str = INVALID


# --- Types for query parameters -----------------------------------------------------------


def _ascii_digits(value: object) -> object:
    """A query's integer is ASCII digits only: pydantic alone also reads "2024.0", " 2024",
    "+2024" or "1_000"."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("expected ASCII digits")
    return value


def _printable(value: str | None) -> str | None:
    """Refuses control characters (a NUL would reach PostgreSQL, which refuses it)."""
    if value is not None and not value.isprintable():
        raise ValueError("expected printable characters")
    return value


# After `Query(ge=..., le=...)` in the `Annotated` (before it, the bounds would not reach
# the document's `minimum` and `maximum`).
ASCII_DIGITS = BeforeValidator(_ascii_digits)
PrintableText = Annotated[str, AfterValidator(_printable), Expected("printable characters")]


# --- The answer to an invalid request -----------------------------------------------------


def refusal(request: Request, errors: Sequence[Any]) -> tuple[int, str]:
    """The status and detail answering `errors` (a RequestValidationError's): one sentence
    per wrong parameter or body field, in the order FastAPI found them, never their values."""
    fields = _declared_parameters(request)
    status: int | None = None
    sentences: list[str] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        field = fields.get(str(loc[1])) if len(loc) == 2 and loc[0] in PARAMETER_SOURCES else None
        if field is not None:
            code, sentence = _parameter_refusal(request, loc, field, error)
        else:
            code, sentence = 422, _field_refusal(loc, error)
        status = code if status is None else status
        if sentence not in sentences:
            sentences.append(sentence)
    return status or 422, "; ".join(sentences) or "invalid request"


def _declared_parameters(request: Request) -> dict[str, Any]:
    """The route's parameters (its dependencies' too) by the name a request gives them."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return {}
    return {field.alias: field for field in get_flat_params(route.dependant)}


def _parameter_refusal(
    request: Request, loc: tuple[Any, ...], field: Any, error: dict[str, Any]
) -> tuple[int, str]:
    name = str(loc[1])
    marker = next(_markers(field), Expected())
    expected = marker.text or _expected_from_type(field)
    sent = request.query_params.get(name) if loc[0] == "query" else None
    missing = error.get("type") == "missing" or (sent == "" and field.field_info.is_required())
    if expected is None:
        return marker.status, f"{name} is required" if missing else f"invalid {name}"
    wording = REQUIRED if missing else marker.wording
    return marker.status, wording.format(name=name, expected=expected)


def _field_refusal(loc: tuple[Any, ...], error: dict[str, Any]) -> str:
    """A body field (or anything not declared as a parameter), named by its path."""
    kind = str(error.get("type", ""))
    path = [str(part) for part in loc[1:]] if loc and loc[0] == "body" else list(map(str, loc))
    name = ".".join(path) or "body"
    if kind == "json_invalid":
        return "invalid body: expected JSON"
    if kind == "missing":
        return f"{name} is required"
    if kind in _QUOTE_FREE_ERRORS or kind.endswith("_type"):
        return f"invalid {name}: {error.get('msg', '')}"
    return f"invalid {name}"


def _markers(field: Any) -> Iterator[Expected]:
    """The `Expected` of a parameter: in its metadata or inside its annotation."""
    for item in field.field_info.metadata:
        if isinstance(item, Expected):
            yield item
    for item in _walk(field.field_info.annotation):
        if isinstance(item, Expected):
            yield item


def _walk(annotation: Any) -> Iterator[Any]:
    """Every type and metadata item inside `annotation` (Annotated, unions, Optional)."""
    yield annotation
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        yield from metadata
        yield from _walk(base)
    elif origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _walk(arg)


def _expected_from_type(field: Any) -> str | None:
    """What the parameter's declaration says it takes: an integer's bounds, an enum's or a
    literal's values."""
    metadata = list(field.field_info.metadata)
    for item in _walk(field.field_info.annotation):
        if item is int:
            return _integer(metadata)
        if isinstance(item, type) and issubclass(item, Enum):
            return "one of " + ", ".join(str(member.value) for member in item)
        if get_origin(item) is Literal:
            return "one of " + ", ".join(map(str, get_args(item)))
    return None


def _integer(metadata: list[Any]) -> str:
    low = next((m.ge for m in metadata if isinstance(m, Ge)), None)
    if low is None:
        low = next((m.gt + 1 for m in metadata if isinstance(m, Gt)), None)
    high = next((m.le for m in metadata if isinstance(m, Le)), None)
    if high is None:
        high = next((m.lt - 1 for m in metadata if isinstance(m, Lt)), None)
    if low is not None and high is not None:
        return f"an integer from {low} to {high}"
    if low is not None:
        return f"an integer of at least {low}"
    if high is not None:
        return f"an integer of at most {high}"
    return "an integer"
