"""The viewer's pages and the small JSON routes they poll (``/view``, ``/view/jobs/{id}``, ``/view/api/…``).

The pages are static files of this package (``static/``: HTML, CSS, JavaScript; no build step, no
CDN). Everything they show comes from Redis through the routes here: the job list with its rates,
and each frame as its preview JPEG (base64) with the masks entry of the same frame index (COCO
RLE, decoded by the page). Commands go through the API's own routes (tracks, cancel), so they
take the same checks and limits as any client's.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any, cast

import redis
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from pipeline.api.models import JobView
from pipeline.api.viewer.sessions import COOKIE, CSRF_HEADER, LoginThrottle, Sessions
from pipeline.errors import JobError
from pipeline.ledger import JobInfo, JobStore
from pipeline.masks.preview import WATCH_TTL_S
from pipeline.streams import Keys
from pipeline.streams.keys import JOB_ID
from pipeline.streams.previews import PreviewEntry, PreviewReader
from pipeline.streams.wire import as_text, decode_mask_entry, entry_id

ENTRY_ID = r"^\d{1,19}-\d{1,19}$"
RATE_ENTRIES = 10  # the newest masks entries a job's fps and latency are measured over


def static_dir() -> Any:
    """The folder of the viewer's files, shipped in the package."""
    return resources.files("pipeline.api.viewer") / "static"


def page(name: str) -> bytes:
    return (static_dir() / name).read_bytes()


def viewer_router(client: redis.Redis, keys: Keys, sessions: Sessions) -> APIRouter:
    """The viewer's routes over a Redis client (decoded replies) for one token's sessions."""
    router = APIRouter(include_in_schema=False)
    _page_routes(router, sessions, LoginThrottle(client, keys))
    _data_routes(router, client, keys)
    return router


def _page_routes(router: APIRouter, sessions: Sessions, throttle: LoginThrottle) -> None:
    """The pages, and signing in and out."""
    job_id_path = Path(pattern=JOB_ID)

    def html(name: str) -> HTMLResponse:
        return HTMLResponse(page(name), headers={"Cache-Control": "no-store"})

    @router.get("/view")
    def index() -> HTMLResponse:
        return html("index.html")

    @router.get("/view/jobs/{job_id}")
    def job_page(job_id: str = job_id_path) -> HTMLResponse:
        return html("job.html")

    @router.get("/view/login")
    def login_page() -> HTMLResponse:
        return html("login.html")

    @router.post("/view/login")
    async def login(request: Request) -> Response:
        if request.headers.get(CSRF_HEADER.decode()) != "1":
            raise HTTPException(403, f"the login needs the header {CSRF_HEADER.decode()}: 1")
        address = request.client.host if request.client else "unknown"
        wait = await run_in_threadpool(throttle.retry_after, address)
        if wait is not None:
            raise HTTPException(
                429,
                f"too many failed sign-ins from this address: try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        token = _login_token(await request.body())
        if not sessions.token_ok(token):
            await run_in_threadpool(throttle.failed, address)
            raise HTTPException(401, "wrong token")
        await run_in_threadpool(throttle.succeeded, address)
        cookie = await run_in_threadpool(sessions.make)
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        return Response(status_code=204, headers={"Set-Cookie": sessions.set_cookie(cookie, secure)})

    @router.post("/view/logout")
    def logout(request: Request) -> Response:
        """Ends the session for good (its cookie is refused from now on), and clears the cookie."""
        cookie = request.cookies.get(COOKIE)
        if cookie:
            sessions.end(cookie)
        expired = f"{COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
        return Response(status_code=204, headers={"Set-Cookie": expired})


def _data_routes(router: APIRouter, client: redis.Redis, keys: Keys) -> None:
    """What the pages read: the jobs, and a job's previews and frames."""
    store = JobStore(client, keys)
    job_id_path = Path(pattern=JOB_ID)

    def info_of(job_id: str) -> JobInfo:
        try:
            return store.get(job_id)
        except JobError:
            raise HTTPException(404, f"no job or stream {job_id!r}") from None

    @router.get("/view/api/jobs")
    def jobs() -> JSONResponse:
        infos = store.list()
        rates = _rates(client, keys, [i.job_id for i in infos])
        return _json({"items": [_summary(info, keys, rate) for info, rate in zip(infos, rates, strict=True)]})

    @router.get("/view/api/jobs/{job_id}")
    def job(job_id: str = job_id_path) -> JSONResponse:
        info = info_of(job_id)
        summary = _summary(info, keys, _rates(client, keys, [job_id])[0])
        summary["previews_kept"] = int(cast(int, client.xlen(keys.preview(job_id))))
        return _json(summary)

    @router.get("/view/api/jobs/{job_id}/previews")
    def previews(job_id: str = job_id_path) -> JSONResponse:
        """The kept previews' frames and times, oldest first (a finished job's playback)."""
        info_of(job_id)
        kept = PreviewReader(client, keys, job_id).index(100_000)
        return _json({"previews": [{"frame": f, "pts": pts, "capture_time": t} for f, pts, t in kept]})

    @router.get("/view/api/jobs/{job_id}/frames")
    def frames(
        job_id: str = job_id_path,
        after: str | None = Query(default=None, pattern=ENTRY_ID),
    ) -> JSONResponse:
        """The newest frame with a preview, if it is newer than ``after`` (the last one drawn).

        Asking marks the job watched for a while: a live job makes previews only then."""
        info = info_of(job_id)
        client.set(keys.watched(job_id), 1, ex=WATCH_TTL_S)
        newest = PreviewReader(client, keys, job_id).latest()
        shown = [] if newest is None or (after is not None and _after(after, newest.entry_id)) else [newest]
        return _json(
            {"status": info.status.value, "frames": [_frame(client, keys, job_id, p) for p in shown]}
        )

    @router.get("/view/api/jobs/{job_id}/frames/{frame}")
    def frame(job_id: str = job_id_path, frame: int = Path(ge=0, le=2**62)) -> JSONResponse:
        info_of(job_id)
        preview = PreviewReader(client, keys, job_id).frame(frame)
        if preview is None:
            raise HTTPException(404, f"frame {frame} has no preview (none was made, or it was trimmed)")
        return _json(_frame(client, keys, job_id, preview))


def mount_static(app: Any) -> None:
    """Serve the viewer's CSS and JavaScript at ``/view/static``."""
    app.mount("/view/static", StaticFiles(directory=str(static_dir())), name="viewer-static")


def _login_token(raw: bytes) -> str:
    """The token of a sign-in body ``{"token": "..."}``: 400 for a body that is not JSON (nested
    too deep included), 422 for JSON of another shape or a token that is not text."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPException(400, 'the login body must be JSON: {"token": "..."}') from None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise HTTPException(422, 'the login body is {"token": "..."}')
    try:
        token.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. "\ud800"
        raise HTTPException(422, "the token must be text (it holds an unpaired surrogate)") from None
    return token


def _json(data: Any) -> JSONResponse:
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


def _after(after: str, candidate: str) -> bool:
    """Whether ``after`` is at or past ``candidate`` (stream IDs ``ms-seq``)."""
    a, b = (tuple(int(x) for x in i.split("-")) for i in (after, candidate))
    return a >= b


def _summary(info: JobInfo, keys: Keys, rate: dict[str, Any]) -> dict[str, Any]:
    """What the API's job view shows (source and error redacted), with its rates."""
    return {**JobView.of(info, keys.masks(info.job_id), keys.events(info.job_id)).model_dump(), **rate}


def _rates(client: redis.Redis, keys: Keys, job_ids: list[str]) -> list[dict[str, Any]]:
    """Each job's processed frames a second and capture-to-publish latency over its newest
    entries, and its live drops: one pipelined round trip for all."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xrevrange(keys.masks(job_id), count=RATE_ENTRIES)
        pipe.hget(keys.job(job_id), "dropped")
    replies = pipe.execute() if job_ids else []
    out = []
    for i in range(len(job_ids)):
        entries, dropped = replies[2 * i], replies[2 * i + 1]
        published = [float(f["publish_time"]) for _, f in entries if "publish_time" in f]
        captured = [float(f["capture_time"]) for _, f in entries if "capture_time" in f]
        fps = None
        if len(published) >= 2 and published[0] > published[-1]:
            fps = (len(published) - 1) / (published[0] - published[-1])
        latency = published[0] - captured[0] if published and captured else None
        out.append({"fps": fps, "latency_s": latency, "dropped": int(dropped) if dropped else 0})
    return out


def _frame(client: redis.Redis, keys: Keys, job_id: str, preview: PreviewEntry) -> dict[str, Any]:
    """A preview with its frame's masks entry (the same ID), as the page draws it."""
    eid = entry_id(preview.frame)
    found: Any = client.xrange(keys.masks(job_id), eid, eid)
    tracks: list[dict[str, Any]] = []
    width = height = None
    publish_time = notice = None
    if found:
        entry = decode_mask_entry(found[0][0], found[0][1])
        width, height = entry.result.width, entry.result.height
        publish_time, notice = entry.publish_time, entry.notice
        tracks = [
            {
                "id": t.track_id,
                "state": t.state,
                "score": t.score,
                "bbox": t.bbox,
                "rle": t.rle,
                "label": t.label,
            }
            for t in entry.result.tracks
        ]
    return {
        "id": as_text(preview.entry_id),
        "frame": preview.frame,
        "pts": preview.pts,
        "capture_time": preview.capture_time,
        "publish_time": publish_time,
        "width": width or preview.width,
        "height": height or preview.height,
        "notice": notice,
        "preview": {
            "width": preview.width,
            "height": preview.height,
            "jpeg": base64.b64encode(preview.jpeg).decode("ascii"),
        },
        "tracks": tracks,
    }
