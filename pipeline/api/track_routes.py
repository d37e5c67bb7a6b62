"""The routes that add, re-prompt and remove a running job's tracks (``--max-tracks``, atomic in
Redis), and pause or resume its discovery."""

from __future__ import annotations

from fastapi import APIRouter, Path

from pipeline.api.context import CONFLICT, NOT_FOUND, TRACK_CONFLICT, ApiContext, HttpError
from pipeline.api.models import Accepted, DiscoveryBody, TrackCommandBody, invalid
from pipeline.errors import InvalidInputError
from pipeline.ledger.slots import spec_track_ids
from pipeline.streams.control import Command, send
from pipeline.streams.keys import JOB_ID


def track_routes(ctx: ApiContext, kind: str, live: bool) -> APIRouter:
    """The routes of ``/{kind}/{job_id}/tracks``."""
    router = APIRouter()
    one = "stream" if live else "job"
    path_id = Path(pattern=JOB_ID, description=f"the {one}'s id")

    @router.post(
        f"/{kind}/{{job_id}}/tracks",
        status_code=202,
        response_model=Accepted,
        operation_id=f"add_{one}_track",
        summary="Add a track, or re-prompt one (applies from the next frame)",
        responses={**NOT_FOUND, **TRACK_CONFLICT},
        dependencies=ctx.secured,
        tags=[kind],
    )
    def add_track(body: TrackCommandBody, job_id: str = path_id) -> Accepted:
        info = ctx.job(job_id, live)
        if info.status.terminal:
            raise HttpError(409, f"{one} {job_id} is {info.status.value}: its tracks are final")
        try:
            prompt = body.to_prompt(ctx.settings.max_frame_pixels)
        except InvalidInputError as exc:
            raise HttpError(422, [invalid([], exc)]) from None
        with ctx.commanding:
            if body.action == "add":
                fits, count = ctx.slots.take(job_id, body.id, spec_track_ids(info.spec))
                if not fits:
                    raise HttpError(
                        409,
                        f"{one} {job_id} has {count} tracks, the most this service allows "
                        f"(--max-tracks {ctx.settings.max_tracks}): remove one first",
                    )
            send(ctx.client, ctx.keys, job_id, Command(body.action, body.id, prompt))
        return Accepted(id=job_id, command=body.action, track=body.id)

    @router.delete(
        f"/{kind}/{{job_id}}/tracks/{{track_id}}",
        status_code=202,
        response_model=Accepted,
        operation_id=f"remove_{one}_track",
        summary="Remove a track (from the next frame)",
        responses={**NOT_FOUND, **CONFLICT},
        dependencies=ctx.secured,
        tags=[kind],
    )
    def remove_track(job_id: str = path_id, track_id: int = Path(ge=1, le=2**31 - 1)) -> Accepted:
        info = ctx.job(job_id, live)
        if info.status.terminal:
            raise HttpError(409, f"{one} {job_id} is {info.status.value}: its tracks are final")
        with ctx.commanding:  # the command first: a slot is never free while its track may be there
            send(ctx.client, ctx.keys, job_id, Command("remove", track_id))
            ctx.slots.free(job_id, track_id, spec_track_ids(info.spec))
        return Accepted(id=job_id, command="remove", track=track_id)

    @router.post(
        f"/{kind}/{{job_id}}/discovery",
        status_code=202,
        response_model=Accepted,
        operation_id=f"set_{one}_discovery",
        summary="Pause or resume discovery (from the next frame; the tracks it found go on)",
        responses={**NOT_FOUND, **CONFLICT},
        dependencies=ctx.secured,
        tags=[kind],
    )
    def set_discovery(body: DiscoveryBody, job_id: str = path_id) -> Accepted:
        info = ctx.job(job_id, live)
        if info.status.terminal:
            raise HttpError(409, f"{one} {job_id} is {info.status.value}: it discovers no more")
        if not info.spec.get("discover"):
            raise HttpError(409, f"{one} {job_id} does not discover (it was created without discover)")
        cmd = "resume_discovery" if body.on else "pause_discovery"
        send(ctx.client, ctx.keys, job_id, Command(cmd))
        return Accepted(id=job_id, command=cmd)

    return router
