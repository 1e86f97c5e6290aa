"""The operations page (read from the services' `/ops/pipeline`) and its one change: replaying
a dead letter, done as `e2c deadletters replay` does it, with the ops Kafka access the console
was given (E2C_KAFKA_USERNAME / E2C_KAFKA_PASSWORD); without one the button is not shown."""

from __future__ import annotations

import asyncio
import logging
import uuid

from aiokafka.errors import KafkaError
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from console.clients import Refused
from console.operations import (
    DEAD_LETTER_LIMIT,
    REFRESH_SECONDS,
    SERVICES,
    Answer,
    Unanswered,
    operations_page,
)
from console.pages import (
    SESSION_COOKIE,
    PageError,
    form_of,
    now,
    page_session,
    read_services,
    render,
)
from console.sessions import Session, same_secret
from deploy.ops import ReplayError, replay_dead_letter
from shared.kafka_access import KafkaAccess
from shared.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()
NO_ACCESS = ("Le bouton « Rejouer » n'est pas proposé : la console n'a pas reçu d'accès Kafka "
             "d'exploitation (E2C_KAFKA_USERNAME et E2C_KAFKA_PASSWORD, que `e2c stack up` "
             "lui donne). Rejouez avec `e2c deadletters replay --id EVENT_ID`.")


@router.get("/operations")
async def operations(request: Request) -> Response:
    session = page_session(request, "operations")
    answers = await _pipelines(request, session)
    return render(request, "operations.html",
                  page=operations_page(answers, now(), DEAD_LETTER_LIMIT),
                  refresh=REFRESH_SECONDS, limit=DEAD_LETTER_LIMIT,
                  notice=_notices(request).pop(_session_id(request), ""),
                  can_replay=replay_access(request) is not None, no_access=NO_ACCESS)


async def _pipelines(request: Request, session: Session) -> dict[str, Answer]:
    """The three services' answers, asked at once. A refused token is the page's refusal;
    a service down or failing is shown as such."""
    clients = read_services(request)
    found = await asyncio.gather(
        *(clients.pipeline(session.token, name, DEAD_LETTER_LIMIT) for name in SERVICES),
        return_exceptions=True,
    )
    answers: dict[str, Answer] = {}
    for name, answer in zip(SERVICES, found, strict=True):
        if isinstance(answer, Refused):
            if answer.status in (401, 403):
                raise answer
            answers[name] = Unanswered(None if answer.status == 502 else answer.status)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            answers[name] = answer
    return answers


@router.post("/operations/replay")
async def replay(request: Request) -> Response:
    form = await form_of(request)  # a cross-site POST is refused before anything else
    session = page_session(request, "operations")
    if not same_secret(form.get("csrf"), session.csrf):
        raise PageError(403, "Formulaire expiré ou venu d'ailleurs : rechargez la page.")
    event_id = _event_id(form.get("event_id"))
    access = replay_access(request)
    if access is None:
        raise PageError(503, NO_ACCESS)
    if not await read_services(request).still_ops(session.token):
        raise PageError(403, "Votre jeton ne permet plus l'exploitation : rien n'a été rejoué.")
    try:
        sent = await replay_dead_letter(access, event_id)
    except ReplayError:
        raise PageError(409, "Cette lettre ne peut pas être rejouée : introuvable, sans son "
                             "message d'origine entier, ou venue d'un sujet inconnu.") from None
    except (KafkaError, OSError, TimeoutError) as error:
        log.warning("dead letter replay failed: %s", type(error).__name__)
        raise PageError(502, "Le broker n'a pas pris le rejeu : réessayez.") from None
    _notices(request)[_session_id(request)] = (
        f"Lettre {sent['event_id']} rejouée : renvoyée sur {sent['source_topic']}, "
        f"partition {sent['partition']}, position {sent['offset']}.")
    return RedirectResponse("/operations", 303)


def _event_id(text: str | None) -> str:
    try:
        return str(uuid.UUID(text or "", version=None))
    except ValueError:
        raise PageError(400, "Le champ event_id doit être l'identifiant (UUID) d'une lettre "
                             "morte.") from None


def replay_access(request: Request) -> KafkaAccess | None:
    """The ops principal the console replays with, None when it was given none."""
    settings: Settings = request.app.state.settings
    if not settings.kafka_username or settings.kafka_password is None:
        return None
    return settings.kafka_access()


def _notices(request: Request) -> dict[str, str]:
    """The message of a replay, shown once on the next page of the same session."""
    state = request.app.state
    if not hasattr(state, "operations_notices"):
        state.operations_notices = {}
    notices: dict[str, str] = state.operations_notices
    return notices


def _session_id(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")
