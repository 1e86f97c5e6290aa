"""A partner's webhook receiver for the tests: an HTTP server on 127.0.0.1 in a thread that
records every request and answers as the test scripts it (some failures first, a request
held until released, a redirect)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from services.referrals import domain


@dataclass(frozen=True)
class Received:
    """One request (`index`: its rank of arrival): what came, and the status answered."""

    index: int
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int

    @property
    def event_id(self) -> str | None:
        return self.headers.get("e2c-event-id")

    def verifies(self, secret: str, now: float | None = None) -> bool:
        return domain.verify_webhook(
            secret, self.headers.get("e2c-timestamp", ""),
            self.headers.get("e2c-signature", ""), self.body,
            time.time() if now is None else now,
        )


class Receiver:
    """Answers `failures` requests with 500 first, then 200 (or what `answer` returns for a
    request's index). With `hold_first`, the first request waits until `release()` and is
    then answered 503: its sender may be dead by then, so it never counts as delivered."""

    def __init__(
        self,
        failures: int = 0,
        hold_first: bool = False,
        answer: Callable[[int], tuple[int, dict[str, str]]] | None = None,
    ) -> None:
        self.failures = failures
        self.hold_first = hold_first
        self.answer = answer
        self.received: list[Received] = []
        self.held = threading.Event()  # the first request arrived and waits
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._count = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def release(self) -> None:
        self._release.set()

    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in the order they arrived."""
        return [r for r in self.all() if 200 <= r.status < 300]

    def all(self) -> list[Received]:
        """Every request answered so far, in the order they arrived."""
        with self._lock:
            return sorted(self.received, key=lambda received: received.index)

    async def wait_until(self, check: Callable[[Receiver], Any], timeout: float = 60) -> Any:
        """Polls `check(self)` until it is truthy; TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = check(self)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver: {len(self.all())} requests, condition not met")
            await asyncio.sleep(0.1)

    def _decide(self) -> tuple[int, int, dict[str, str]]:
        with self._lock:
            index = self._count
            self._count += 1
        if self.answer is not None:
            return index, *self.answer(index)
        if self.hold_first and index == 0:
            return index, 503, {}
        return index, (500 if index < self.failures else 200), {}

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server convention
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                index, status, answer_headers = receiver._decide()
                if receiver.hold_first and index == 0:
                    receiver.held.set()
                    receiver._release.wait(timeout=120)
                seen = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(Received(index, self.path, seen, body, status))
                try:
                    self.send_response(status)
                    for name, value in answer_headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender went away (killed): nothing to answer

            def log_message(self, *_args: Any) -> None:
                return None

        return Handler


@contextmanager
def receiving(**options: Any) -> Iterator[Receiver]:
    receiver = Receiver(**options).start()
    try:
        yield receiver
    finally:
        receiver.stop()
