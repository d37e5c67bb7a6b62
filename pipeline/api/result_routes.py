"""The routes that page a job's results: its mask entries and its events."""

from __future__ import annotations

from fastapi import APIRouter, Path

from pipeline.api.context import AFTER, COUNT, NOT_FOUND, ApiContext, page_of
from pipeline.api.models import EventPage, EventView, MaskEntryView, MaskPage
from pipeline.streams import MaskReader, read_events
from pipeline.streams.keys import JOB_ID


def result_routes(ctx: ApiContext, kind: str, live: bool) -> APIRouter:
    """The routes of ``/{kind}/{job_id}/masks`` and ``/{kind}/{job_id}/events``."""
    router = APIRouter()
    one = "stream" if live else "job"
    path_id = Path(pattern=JOB_ID, description=f"the {one}'s id")

    @router.get(
        f"/{kind}/{{job_id}}/masks",
        response_model=MaskPage,
        operation_id=f"get_{one}_masks",
        summary="Mask entries (COCO RLE per track), in frame order",
        responses=NOT_FOUND,
        dependencies=ctx.secured,
        tags=[kind],
    )
    def masks(job_id: str = path_id, after: str | None = AFTER, count: int = COUNT) -> MaskPage:
        info = ctx.job(job_id, live)
        entries = page_of(MaskReader(ctx.client, ctx.keys, job_id).read_entries(after, None, count), count)
        page = [
            MaskEntryView(
                id=e.entry_id,
                frame=e.result.frame_index,
                pts=e.result.pts,
                capture_time=e.result.capture_time,
                publish_time=e.publish_time,
                width=e.result.width,
                height=e.result.height,
                tracks=[dict(t.__dict__) for t in e.result.tracks],
            )
            for e in entries
        ]
        return MaskPage(entries=page, next=page[-1].id if page else after, status=info.status.value)

    @router.get(
        f"/{kind}/{{job_id}}/events",
        response_model=EventPage,
        operation_id=f"get_{one}_events",
        summary="Events: status changes, tracks lost and found, reconnects, errors",
        responses=NOT_FOUND,
        dependencies=ctx.secured,
        tags=[kind],
    )
    def events(job_id: str = path_id, after: str | None = AFTER, count: int = COUNT) -> EventPage:
        source = str(ctx.job(job_id, live).spec.get("source", ""))
        found = page_of(read_events(ctx.client, ctx.keys, job_id, after, count), count)
        page = [EventView.of(e, source) for e in found]
        return EventPage(events=page, next=page[-1].id if page else after)

    return router
