"""What every page shares (sessions, roles, forms, errors) and the routes of signing in and
out. Each page keeps its own routes in `console/<page>_routes.py`."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from console import formats
from console.clients import Refused, ServiceClients
from console.sessions import Session, Sessions, same_secret
from console.signin_limit import SigninLimit
from shared.http import bounded_int
from shared.schools import School, load_schools

SESSION_COOKIE = "e2c_session"
SIGNIN_COOKIE = "e2c_signin"  # double-submit secret of the sign-in form (no session yet)
FIRST_YEAR, LAST_YEAR = 2000, 2100
FORM_LIMIT = 8192

router = APIRouter()

# The console's pages, in the order of the menu: (page, label, address). A page is opened
# by a session whose role the services let read what it shows (`clients.PAGE_PROBES`).
NAV: tuple[tuple[str, str, str], ...] = (
    ("finance", "Finances", "/finance"),
    ("indicators", "Indicateurs", "/indicators"),
    ("partners", "Partenaires", "/partners"),
    ("operations", "Exploitation", "/operations"),
)


class PageError(Exception):
    """Answered as the error page with this status and French message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _state(request: Request) -> Any:
    return request.app.state


def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    session = current_session(request)
    nav = [(label, href) for page, label, href in NAV if session and page in session.pages]
    return _state(request).templates.TemplateResponse(
        request, name, {"session": session, "nav": nav, **context}, status_code=status
    )


def current_session(request: Request) -> Session | None:
    sessions: Sessions = _state(request).sessions
    return sessions.get(request.cookies.get(SESSION_COOKIE))


def page_session(request: Request, page: str) -> Session:
    """The session of a page's reader: none -> sign in first; a role without it -> 403."""
    session = current_session(request)
    if session is None:
        raise PageError(401, "Connectez-vous pour ouvrir cette page.")
    if page not in session.pages:
        raise PageError(403, "Votre rôle ne permet pas d'ouvrir cette page.")
    return session


def now() -> datetime:
    return datetime.now(formats.PARIS)


def year_of(request: Request) -> int:
    text = request.query_params.get("year")
    if text is None:
        return now().year
    year = bounded_int(text, FIRST_YEAR, LAST_YEAR)
    if year is None:
        raise PageError(400, f"L'année est un nombre de {FIRST_YEAR} à {LAST_YEAR}.")
    return year


async def form_of(request: Request) -> dict[str, str]:
    """The urlencoded form, first value of each field; a cross-site POST is refused."""
    if not same_origin(request):
        raise PageError(403, "Requête refusée : elle ne vient pas de la console.")
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise PageError(413, "Formulaire trop long.")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def same_origin(request: Request) -> bool:
    """A browser names the page a POST comes from (Origin, else Referer): it must be ours."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True  # not a browser's cross-site form: the CSRF token still decides
    return urlsplit(origin).netloc == request.headers.get("host")


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=_state(request).settings.console_secure_cookie)


# --- Routes -------------------------------------------------------------------------------


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/")
async def home(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return RedirectResponse("/signin", 303)
    for page, _, href in NAV:
        if page in session.pages:
            return RedirectResponse(href, 303)
    raise PageError(403, "Votre rôle ne permet d'ouvrir aucune page de la console.")


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    return signin_page(request)


def signin_page(request: Request, status: int = 200, message: str = "") -> Response:
    secret = secrets.token_urlsafe(32)
    response = render(request, "signin.html", status, csrf=secret, message=message)
    set_cookie(request, response, SIGNIN_COOKIE, secret, max_age=3600)
    return response


@router.post("/signin")
async def signin(request: Request) -> Response:
    limit: SigninLimit = _state(request).signin_limit
    address = request.client.host if request.client else ""
    wait = limit.retry_after(address)
    if wait:
        response = signin_page(request, 429, "Trop de jetons refusés depuis votre adresse : "
                                             f"réessayez dans {wait}\u00a0s.")
        response.headers["Retry-After"] = str(wait)
        return response
    form = await form_of(request)
    if not same_secret(form.get("csrf"), request.cookies.get(SIGNIN_COOKIE, "")) or not (
        request.cookies.get(SIGNIN_COOKIE)
    ):
        raise PageError(403, "Formulaire expiré ou venu d'ailleurs : rechargez la page.")
    token = form.get("token", "").strip()
    clients: ServiceClients = _state(request).clients
    verdict = await clients.pages_of(token, now().year) if token else None
    if verdict is None or not verdict.known:
        limit.refused(address)
        return signin_page(request, 401, "Jeton inconnu.")
    if not verdict.pages:
        return signin_page(request, 403, "Ce jeton n'ouvre aucune page de la console.")
    agency_id = await clients.own_agency(token) if (
        "partners" in verdict.pages) else None
    sessions: Sessions = _state(request).sessions
    response = RedirectResponse("/", 303)
    set_cookie(request, response, SESSION_COOKIE,
               sessions.open(token, verdict.pages, agency_id),
               max_age=int(sessions.lifetime_seconds))
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout")
async def signout(request: Request) -> Response:
    form = await form_of(request)
    session = current_session(request)
    if session is not None and not same_secret(form.get("csrf"), session.csrf):
        raise PageError(403, "Formulaire expiré ou venu d'ailleurs : rechargez la page.")
    _state(request).sessions.close(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/signin", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def school_registry(request: Request) -> Mapping[str, School]:
    """The schools by id, in the registry's order: the file the services read
    (E2C_SCHOOLS_FILE, else the one shipped), read once."""
    return _registry(_state(request).settings.schools_file)


def school_names(request: Request) -> Mapping[str, str]:
    return {school.id: school.name for school in school_registry(request).values()}


@cache
def _registry(path: Path | None) -> Mapping[str, School]:
    return MappingProxyType(load_schools(path))


def read_services(request: Request) -> ServiceClients:
    clients: ServiceClients = _state(request).clients
    return clients


REFUSALS = {
    401: (403, "Le service refuse votre jeton : reconnectez-vous."),
    403: (403, "Votre rôle ne permet pas de voir ces données."),
    404: (404, "Ce document n'existe pas (encore)."),
}


def refusal_page(request: Request, error: Refused) -> Response:
    status, message = REFUSALS.get(error.status, (502, "Un service ne répond pas."))
    return render(request, "error.html", status, message=message)


def error_page(request: Request, error: PageError) -> Response:
    if error.status == 401:
        return RedirectResponse("/signin", 303)
    return render(request, "error.html", error.status, message=error.message)
