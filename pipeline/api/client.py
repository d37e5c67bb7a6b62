"""A small client of the REST API (what ``samstream submit|status|cancel|watch|track --api`` use)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from pipeline.errors import InvalidInputError, JobError, SamstreamError


class ApiError(SamstreamError):
    """The API answered with an error, or could not be reached."""


class ApiClient:
    """Talks to ``samstream serve`` at ``url`` with a bearer token.

    Args:
        url: the API's base URL (``http://host:8000``).
        token: its token.
        timeout_s: per request.
    """

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidInputError(f"--api must be an http(s):// URL, got {url!r}")
        if not token:
            raise InvalidInputError("talking to the API needs its token: --token T or SAMSTREAM_API_TOKEN")
        self.url = url.rstrip("/")
        self.kinds: dict[str, str] = {}  # job id -> "jobs" or "streams"
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the samstream API at {self.url}: {exc}") from None
        if r.status_code == 401:
            raise ApiError(
                f"the API at {self.url} refused the token (401): check --token / SAMSTREAM_API_TOKEN"
            )
        if r.status_code == 404:
            raise JobError(_detail(r))
        if r.status_code >= 400:
            raise ApiError(f"the API said {r.status_code}: {_detail(r)}")
        return r.json() if r.content else None  # 204: no body

    # -- jobs ---------------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], live: bool) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/streams" if live else "/jobs", json=body)
        return result

    def get(self, job_id: str) -> dict[str, Any]:
        """The job or stream ``job_id`` (the API keeps them under ``/jobs`` and ``/streams``)."""
        kinds = [self.kinds[job_id]] if job_id in self.kinds else ["jobs", "streams"]
        for kind in kinds:
            try:
                result: dict[str, Any] = self.request("GET", f"/{kind}/{job_id}")
            except JobError:
                continue
            self.kinds[job_id] = kind
            return result
        raise JobError(f"no job or stream {job_id!r} at {self.url}")

    def kind_of(self, job_id: str) -> str:
        """``jobs`` or ``streams``: where the API keeps this id (looked up once)."""
        if job_id not in self.kinds:
            self.get(job_id)
        return self.kinds[job_id]

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("DELETE", f"/{self.kind_of(job_id)}/{job_id}")
        return result

    def delete_data(self, job_id: str) -> str:
        """Delete a finished job's or stream's data; its kind (``jobs`` or ``streams``)."""
        kind = self.kind_of(job_id)
        self.request("DELETE", f"/{kind}/{job_id}/data")
        return kind

    def track(self, job_id: str, action: str, track: int, prompt: dict[str, Any] | None) -> dict[str, Any]:
        kind = self.kind_of(job_id)
        if action == "remove":
            result: dict[str, Any] = self.request("DELETE", f"/{kind}/{job_id}/tracks/{track}")
        else:
            result = self.request(
                "POST", f"/{kind}/{job_id}/tracks", json={"id": track, "action": action, **(prompt or {})}
            )
        return result

    def masks(self, job_id: str, follow: bool, poll_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """The job's mask entries in frame order; with ``follow``, until the job ends."""
        kind = self.kind_of(job_id)
        after: str | None = None
        while True:
            params: dict[str, Any] = {"count": 500, **({"after": after} if after else {})}
            # The page's status is read before its entries: a finished job's page has them all.
            page = self.request("GET", f"/{kind}/{job_id}/masks", params=params)
            yield from page["entries"]
            after = page["next"]
            if page["entries"]:
                continue
            if not follow or page["status"] in ("succeeded", "failed", "cancelled"):
                return
            time.sleep(poll_s)


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail")
    except ValueError:
        return r.text.strip()[:200] or r.reason_phrase
    if isinstance(detail, list):  # 422: [{loc, msg}, ...]
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'body'}: {d.get('msg')}" for d in detail
        )
    return str(detail)
