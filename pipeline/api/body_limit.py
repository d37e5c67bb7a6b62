"""The limit on a request's body (``serve --max-body-kb``), an ASGI middleware. The limits on a
job's record (tracks per job, active jobs) are the ledger's (:mod:`pipeline.ledger.slots`)."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.internal import WatchedSend, send_json


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, never reading more than that.

    A ``Content-Length`` over the limit is answered before the body is read; a body without one
    (chunked) is counted as it streams in, and the read that passes the limit fails with 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"request body over {max_bytes // 1024} KB, the most this service takes (--max-body-kb)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._answer(send, 413 if length.isdigit() else 400, length)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI lets an HTTPException raised while reading the body through as it is.
                    raise HTTPException(413, self.message)
            return message

        watched = WatchedSend(send)
        try:
            await self.app(scope, counted, watched)
        except HTTPException as exc:
            if watched.started or exc.status_code != 413:
                raise
            await self._answer(send, 413, None)

    async def _answer(self, send: Send, status: int, length: str | None) -> None:
        detail = self.message if status == 413 else f"Content-Length must be a number, got {length!r}"
        await send_json(send, status, detail)
