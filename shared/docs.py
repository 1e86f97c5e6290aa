"""A service's AsyncAPI document, for token holders: `GET /docs/asyncapi` (an HTML page
rendered here, without scripts or network) and `GET /docs/asyncapi.json`.

faststream's own page loads its scripts from public CDNs and shows the broker address to
anyone. Here the document is faststream's specification of the service's broker without
its `servers` (where the broker is), and nothing on these paths publishes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from html import escape
from typing import Any

from faststream.specification.base import SpecificationFactory
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from shared.http import Authorizer

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


def docs_routes(specification: SpecificationFactory, auth: Authorizer) -> list[BaseRoute]:
    """GET only, for any known token (401 without one); built on the first request."""
    document: Callable[[], Json] = cache(lambda: public_document(specification))
    page: Callable[[], str] = cache(lambda: render_page(document()))

    async def html(request: Request) -> Response:
        auth.role(request)
        return HTMLResponse(page(), headers={"Content-Security-Policy": PAGE_POLICY})

    async def as_json(request: Request) -> Response:
        auth.role(request)
        return JSONResponse(document())

    return [
        Route(DOCS_PATH, html, methods=["GET"]),
        Route(f"{DOCS_PATH}.json", as_json, methods=["GET"]),
    ]
