"""What clients see of the service's own failures: a generic message and an error id.

The id, with the exception and its traceback, goes to the server's log (logger ``pipeline.api``,
stderr unless the process configures logging), so an operator finds what a client reports. The
text of an exception never reaches a client: it can name Redis's address, hosts of the cluster,
or the source a job was given.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("pipeline.api")


def logged(what: str, exc: BaseException | None = None) -> str:
    """Log ``what`` (and ``exc`` with its traceback) under a new error id; that id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("error id %s: %s", error_id, what, exc_info=exc)
    return error_id


def internal_error(error_id: str) -> str:
    """The message of a 500."""
    return f"internal error (id {error_id}); the service's log has the details"


def unavailable(what: str, error_id: str) -> str:
    """The message of a 503: ``what`` must be generic (no address, no exception text)."""
    return f"{what} (error id {error_id}); try again later"


class WatchedSend:
    """An ASGI ``send`` that notes whether the answer has begun (after which no other can be sent)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


async def send_json(
    send: Send, status: int, detail: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer ``{"detail": detail}`` with ``status`` (and ``extra_headers``) from an ASGI middleware."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class InternalErrors:
    """ASGI middleware: any exception a route lets through is a 500 with an error id, logged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            error_id = logged(f"{scope.get('method')} {scope.get('path')} failed", exc)
            if watched.started:  # half an answer is out: the server can only drop the connection
                raise
            await send_json(send, 500, internal_error(error_id))
