"""The exception hierarchy of samstream.

Every error a user can cause derives from :class:`SamstreamError`; the CLI prints its message as one
line and exits non-zero, without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SamstreamError(Exception):
    """Base of every error samstream raises on purpose."""


class InvalidInputError(SamstreamError, ValueError):
    """A value given by the user (a prompt, an option, a spec field) is not acceptable."""


class PromptError(InvalidInputError):
    """A point or box prompt is malformed or lies outside the image."""


class ImageReadError(SamstreamError):
    """An image file cannot be read or decoded."""


class CheckpointError(SamstreamError):
    """Model weights are missing, unreadable, or not in the official MobileSAM layout."""


class WeightsUnavailableError(CheckpointError):
    """No checkpoint file is given, none is cached, and the download failed."""


class UnsafeCacheError(SamstreamError):
    """A cached file that runs as code (a compiled encoder) lies where another user could change it."""


class SourceError(SamstreamError):
    """A video source cannot be opened or decoded."""


class RedisUnavailableError(SamstreamError):
    """The Redis server cannot be reached or started."""


class JobError(SamstreamError):
    """A job cannot be started, resumed or found."""


class TooManyJobsError(JobError):
    """A job is not created: the most jobs a service runs at once are queued or running already."""

    def __init__(self, active: int, most: int) -> None:
        super().__init__(f"{active} jobs are queued or running, the most allowed ({most})")
        self.active = active
        self.most = most
