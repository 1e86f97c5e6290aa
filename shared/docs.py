"""A service's documents, for token holders: its AsyncAPI document (`GET /docs/asyncapi`,
an HTML page rendered here, without scripts or network, and `GET /docs/asyncapi.json`) and
its OpenAPI document (`GET /docs/openapi.json`, also committed as `docs/openapi/<name>.json`).

faststream's own page loads its scripts from public CDNs and shows the broker address to
anyone. Here the document is faststream's specification of the service's broker without
its `servers` (where the broker is), and nothing on these paths publishes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from html import escape
from typing import Any

from fastapi import APIRouter, FastAPI
from faststream.specification.base import SpecificationFactory
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from shared.http import allow, app_context, problems

DOCS_PATH = "/docs/asyncapi"
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'"
STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:70em}"
    "pre{background:#f4f4f4;padding:1em;overflow:auto}"
    "section{border-top:1px solid #ccc;margin-top:1.5em}"
)

Json = dict[str, Any]


def public_document(specification: SpecificationFactory) -> Json:
    """The AsyncAPI document without the broker's address (`servers`, and each channel's
    reference to them)."""
    document: Json = specification.to_specification().to_jsonable()
    document.pop("servers", None)
    for channel in document.get("channels", {}).values():
        channel.pop("servers", None)
    return document


def _resolve(document: Json, ref: str) -> Json:
    """The object a local `$ref` (`#/components/...`) points to; {} when there is none."""
    found: Any = document
    for part in ref.removeprefix("#/").split("/"):
        found = found.get(part, {}) if isinstance(found, dict) else {}
    return found if isinstance(found, dict) else {}


def _pre(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _actions(document: Json) -> dict[str, str]:
    """Channel name -> what the service does on it (send, receive)."""
    actions: dict[str, str] = {}
    for operation in document.get("operations", {}).values():
        name = str(operation.get("channel", {}).get("$ref", "")).rpartition("/")[2]
        actions[name] = str(operation.get("action", ""))
    return actions


def _message_html(document: Json, name: str, message: Json) -> str:
    """The message's title and its payload schema (a referenced one is shown in place)."""
    resolved = _resolve(document, message["$ref"]) if "$ref" in message else message
    payload = resolved.get("payload", {})
    title = escape(str(resolved.get("title", name)))
    if "$ref" not in payload:
        return f"<h3>Message {title}</h3>{_pre(payload)}"
    schema = escape(str(payload["$ref"]).rpartition("/")[2])
    return (f"<h3>Message {title}</h3><p>Payload: schema {schema}</p>"
            f"{_pre(_resolve(document, payload['$ref']))}")


def _channel_html(document: Json, name: str, channel: Json, action: str) -> str:
    messages = channel.get("messages", {})
    parts = [
        f"<section><h2>{escape(name)}</h2>",
        f"<p>Topic <code>{escape(str(channel.get('address', '')))}</code>",
        f" ({escape(action)})</p>" if action else "</p>",
        f"<p>{escape(str(channel['description']))}</p>" if "description" in channel else "",
        *(_message_html(document, key, message) for key, message in messages.items()),
        "</section>",
    ]
    return "".join(parts)


def render_page(document: Json) -> str:
    """The document as a page: channels, their messages and payloads, then the schemas."""
    info = document.get("info", {})
    title = escape(str(info.get("title", "AsyncAPI")))
    actions = _actions(document)
    channels = "".join(
        _channel_html(document, name, channel, actions.get(name, ""))
        for name, channel in document.get("channels", {}).items()
    )
    schemas = "".join(
        f"<h3 id='schema-{escape(name)}'>{escape(name)}</h3>{_pre(schema)}"
        for name, schema in document.get("components", {}).get("schemas", {}).items()
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>{escape(str(info.get('description', '')))}</p>"
        f"<p>AsyncAPI {escape(str(document.get('asyncapi', '')))}, "
        f"version {escape(str(info.get('version', '')))}; "
        f"the same document as JSON: <code>{DOCS_PATH}.json</code></p>"
        f"{channels}<section><h2>Schemas</h2>{schemas}</section></body></html>"
    )


# --- The service's OpenAPI document --------------------------------------------------------

OPENAPI_PATH = "/docs/openapi.json"
# FastAPI documents a 422 of its own shape (`HTTPValidationError`, with the value sent) on
# every route with parameters; the services answer `shared.http.Problem` instead, at the
# status each route documents, so those never appear.
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
JSON = "application/json"
_METHOD_ORDER = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def openapi_document(app: FastAPI) -> Json:
    """The app's OpenAPI 3.1 document, as FastAPI builds it from the routes and their
    pydantic models, with three corrections: no FastAPI validation-error answers; error
    answers as JSON (FastAPI gives them the media type of the route's success, such as
    text/html or text/csv, but the app's exception handlers answer JSON); each path's
    operations in a fixed order (the document is the same from run to run)."""
    document: Json = copy.deepcopy(app.openapi())
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            for status, response in list(responses.items()):
                if _FASTAPI_VALIDATION[0] in json.dumps(response):
                    del responses[status]
                elif str(status)[0] in "45" and response.get("content"):
                    response["content"] = {JSON: next(iter(response["content"].values()))}
        document["paths"][path] = dict(sorted(
            operations.items(),
            key=lambda item: _METHOD_ORDER.index(item[0]) if item[0] in _METHOD_ORDER else 99,
        ))
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    return document


# --- Routes ---------------------------------------------------------------------------------

router = APIRouter(tags=["documentation"], dependencies=[allow()])
DOCUMENT = problems((401, "No bearer token, or an unknown one: any known token reads it."))


def _cached(request: Request, name: str, build: Callable[[], Any]) -> Any:
    """`build()` once per app (the documents do not change while it runs)."""
    state = request.app.state
    if not hasattr(state, name):
        setattr(state, name, build())
    return getattr(state, name)


def _asyncapi(request: Request) -> Json:
    context = app_context(request)
    document: Json = _cached(request, "asyncapi_document",
                             lambda: public_document(context.specification))
    return document


@router.get(
    DOCS_PATH,
    response_class=HTMLResponse,
    responses={200: {"description": "The AsyncAPI document as a page: no scripts, nothing "
                     "fetched from the network.",
                     "content": {"text/html": {"schema": {"type": "string"}}}},
               **DOCUMENT},
)
async def asyncapi_page(request: Request) -> Response:
    """The service's AsyncAPI document (its topics and their payloads) as a page."""
    page: str = _cached(request, "asyncapi_page", lambda: render_page(_asyncapi(request)))
    return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})


@router.get(f"{DOCS_PATH}.json", response_model=dict[str, Any], responses=DOCUMENT)
async def asyncapi_json(request: Request) -> Any:
    """The service's AsyncAPI 3.0 document, without the broker's address."""
    return _asyncapi(request)


@router.get(OPENAPI_PATH, response_model=dict[str, Any], responses=DOCUMENT)
async def openapi_json(request: Request) -> Any:
    """This document: the service's OpenAPI 3.1 document (`docs/openapi/<service>.json`)."""
    return _cached(request, "openapi_document", lambda: openapi_document(request.app))
