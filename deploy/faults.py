"""Fault injection for the tests, opt-in: a service run as

    python -m deploy.faults <service> <point>

instead of `python -m services.<service>` runs as usual until it reaches `point`, where it
dies like a SIGKILL (`os._exit`: nothing flushed, closed or committed after it):

- `after_db_commit`: a batch's transaction is committed, its Kafka offsets are not.

The services never import this module and read no variable for it: their consumer only
offers the hook (`BatchConsumer.after_db_commit`, None unless set here).
`ServiceProcess.start(crash_at=...)` (deploy/harness.py) starts a service this way.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable

from shared.service import ServiceApp
from shared.service import main as run_service

log = logging.getLogger(__name__)

CRASH_EXIT_CODE = 75
CRASH_POINTS = ("after_db_commit",)


def crash(point: str) -> Callable[[], None]:
    """Exits the process at once with CRASH_EXIT_CODE, saying which point it reached."""

    def die() -> None:
        log.warning("crash point %s reached: exiting", point)
        os._exit(CRASH_EXIT_CODE)

    return die


def with_crash(app: ServiceApp, point: str) -> ServiceApp:
    """`app`, set to die at `point` (one of CRASH_POINTS)."""
    if point != "after_db_commit":
        raise ValueError(f"unknown crash point {point!r}: one of {', '.join(CRASH_POINTS)}")
    app.ctx.consumer.after_db_commit = crash(point)
    return app


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in CRASH_POINTS:
        sys.exit(f"usage: python -m deploy.faults <service> {'|'.join(CRASH_POINTS)}")
    name, point = argv
    create_app: Callable[[], ServiceApp] = importlib.import_module(
        f"services.{name}.app"
    ).create_app
    run_service(lambda: with_crash(create_app(), point))


if __name__ == "__main__":
    main(sys.argv[1:])
