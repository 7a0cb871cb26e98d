"""Slots that a slow or idle client gives back: the evaluator's HTTP protocol and its request limit.

uvicorn times out only the gap between two requests (`timeout_keep_alive`): a connection that never
finishes its headers, or its body, keeps its place for as long as the client likes, and uvicorn's
`limit_concurrency` counts such connections, so 64 idle sockets answer everyone (the liveness probe
included) 503. No server installed next to uvicorn (no hypercorn, no granian) has header deadlines either,
so the deadlines live in a subclass of uvicorn's httptools protocol, where the parser reports each step:

- headers: a connection must complete its request headers within `header_timeout_s` of opening, or of
  the end of its previous response; otherwise it is closed;
- body: a request must complete its body within `body_timeout_s` of its headers; otherwise the
  connection is closed (the application sees the client gone);
- connections: past `max_connections` open ones, a new connection closes the oldest one that is waiting
  for headers (an idle or trickling one, never a request in flight).

Requests in flight are counted by `RequestLimit` in the application, not by uvicorn: past
`max_concurrency` a request gets 503 at once, except the exempt paths (`/healthz`), which stay
answerable while the slots are full.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a cap on open connections.

    `guarded_protocol` makes one subclass per server, holding that server's limits and its connections
    that wait for headers (oldest first)."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    waiting: OrderedDict[DeadlineHttpProtocol, None]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_headers()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self.waiting.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self.waiting.pop(self, None)
        self._arm(self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # A pipelined request already has its headers; only an idle connection waits for new ones.
        idle = not self.pipeline
        super().on_response_complete()
        if idle and not self.transport.is_closing():
            self._await_headers()

    def _await_headers(self) -> None:
        self.waiting[self] = None
        self._arm(self.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.close()

    def _make_room(self) -> None:
        """Over the cap, close the oldest connection still waiting for its headers (this one if alone)."""
        if len(self.connections) <= self.max_connections:
            return
        oldest = next(iter(self.waiting))  # this connection is waiting too, so there is one
        self.waiting.pop(oldest)
        oldest._disarm()
        oldest.transport.close()


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_connections: int) -> type:
    """A protocol class for one uvicorn server (`uvicorn.Config(http=...)`), with its own limits."""
    return type(
        "GuardedHttpProtocol",
        (DeadlineHttpProtocol,),
        {
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "max_connections": max_connections,
            "waiting": OrderedDict(),
        },
    )


class RequestLimit:
    """Pure ASGI middleware: at most `max_requests` requests in flight; past it 503 at once, except for
    the `exempt` paths (cheap ones such as /healthz, which must answer while the slots are full)."""

    def __init__(self, app, max_requests: int, exempt: frozenset[str]) -> None:
        self.app = app
        self.max_requests = max_requests
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_requests:
            return await self._refuse(send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, send) -> None:
        # `connection: close`: the request's body is not read, so the connection cannot carry another one.
        body = json.dumps({"detail": f"busy: {self.max_requests} requests in flight; retry shortly"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
