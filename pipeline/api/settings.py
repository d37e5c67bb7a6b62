"""The API's settings: what ``samstream serve``'s options set, checked once."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.api.models import MAX_TRACKS, TRACKS_CEILING
from pipeline.config import IMAGE_SIZE_RULE, is_image_size
from pipeline.errors import InvalidInputError
from pipeline.sources.limits import DEFAULT_MAX_FRAME_PIXELS
from pipeline.sources.policy import SourcePolicy
from pipeline.spec import MAX_FPS
from pipeline.streams.retention import DEFAULT_KEEP_S, MAX_MAXLEN, check_keep, default_maxlen, format_keep

IMAGE_SIZES = (256, 512, 1024)  # the encoder takes multiples of 16; each size is compiled and kept
ADMISSIONS = ("none", "capacity")  # serve --admission


@dataclass(frozen=True)
class ApiSettings:
    """How the API behaves.

    Attributes:
        token: the bearer token every request must carry.
        policy: the sources it accepts.
        prefix: Redis key prefix.
        image_size: encoder size of jobs that do not choose one.
        weights: the weights of the service's model (stored in each job's spec).
        max_jobs: most jobs and streams queued or running at once (more: 429).
        max_tracks: most tracks of one job, those added while it runs included (more: 409).
        image_sizes: the encoder sizes a job may choose (others: 422); ``image_size`` is one.
        max_body_kb: largest request body in KiB (more: 413).
        keep_s: seconds a finished job's keys stay in Redis unless it asks for less (None: for ever).
        max_keep_s: the longest ``keep_s`` a job may ask for (None: no bound).
        max_maxlen: the most masks entries a job or stream may ask to keep.
        max_frame_pixels: the most pixels of a frame (``--max-frame-pixels``; None: no limit),
            and so of a mask prompt, refused larger before it is read.
        admission: ``none``, or ``capacity``: a live stream that would push a stream's fair
            share of the encoders below ``min_stream_fps`` is refused with 429
            (:mod:`pipeline.jobs.admission`).
        min_stream_fps: the floor of a stream's fair share under ``capacity`` admission.
        detector_dir: the folder of ONNX detectors a job's discovery may name (by file name);
            None: jobs may not name one.
    """

    token: str
    policy: SourcePolicy = field(default_factory=SourcePolicy)
    prefix: str = "samstream:"
    image_size: int = 1024
    weights: str = "official"
    max_jobs: int = 256
    max_tracks: int = MAX_TRACKS
    image_sizes: tuple[int, ...] = IMAGE_SIZES
    max_body_kb: int = 256
    keep_s: int | None = DEFAULT_KEEP_S
    max_keep_s: int | None = DEFAULT_KEEP_S
    max_maxlen: int = MAX_MAXLEN
    max_frame_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS
    admission: str = "none"
    min_stream_fps: float = 1.0
    detector_dir: str | None = None

    def __post_init__(self) -> None:
        if self.admission not in ADMISSIONS:
            raise InvalidInputError(
                f"--admission must be one of {', '.join(ADMISSIONS)}, got {self.admission!r}"
            )
        if not 0 < self.min_stream_fps <= MAX_FPS:
            raise InvalidInputError(
                f"--min-stream-fps must be > 0 and <= {MAX_FPS:g}, got {self.min_stream_fps}"
            )
        if not self.token:
            raise InvalidInputError("the API needs a token (--token or SAMSTREAM_API_TOKEN)")
        if self.max_jobs < 1:
            raise InvalidInputError(f"--max-jobs must be >= 1, got {self.max_jobs}")
        if not 1 <= self.max_tracks <= TRACKS_CEILING:
            raise InvalidInputError(f"--max-tracks must be 1 to {TRACKS_CEILING}, got {self.max_tracks}")
        if self.max_body_kb < 1:
            raise InvalidInputError(f"--max-body-kb must be >= 1, got {self.max_body_kb}")
        if not self.image_sizes or not all(is_image_size(n) for n in self.image_sizes):
            raise InvalidInputError(
                f"--image-sizes must list sizes, each {IMAGE_SIZE_RULE}, got {list(self.image_sizes)}"
            )
        if self.image_size not in self.image_sizes:
            raise InvalidInputError(
                f"the service's --image-size {self.image_size} must be one of --image-sizes "
                f"{','.join(map(str, self.image_sizes))}"
            )
        check_keep(self.keep_s, "--keep")
        check_keep(self.max_keep_s, "--max-keep")
        if self.max_keep_s is not None and (self.keep_s is None or self.keep_s > self.max_keep_s):
            raise InvalidInputError(
                f"--keep ({format_keep(self.keep_s)}) is longer than --max-keep ({format_keep(self.max_keep_s)})"
            )
        if isinstance(self.max_maxlen, bool) or not isinstance(self.max_maxlen, int) or self.max_maxlen < 1:
            raise InvalidInputError(f"--max-maxlen must be an int >= 1, got {self.max_maxlen!r}")
        pixels = self.max_frame_pixels
        if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1):
            raise InvalidInputError(f"--max-frame-pixels must be None or an int >= 1, got {pixels!r}")

    def keep_of(self, asked: int | None) -> int | None:
        """How long a job that asks for ``asked`` seconds (None: the default) is kept.

        Raises:
            InvalidInputError: it asks for more than :attr:`max_keep_s`.
        """
        if asked is None:
            return self.keep_s
        if self.max_keep_s is not None and asked > self.max_keep_s:
            raise InvalidInputError(
                f"keep_s must be at most {self.max_keep_s} ({format_keep(self.max_keep_s)}, "
                f"this service's maximum), got {asked}"
            )
        return asked

    def maxlen_of(self, asked: int | None, live: bool) -> int | None:
        """The masks entries a job keeps: ``asked``, else the CLI's default (live: 10,000; files: all).

        Raises:
            InvalidInputError: it asks for more than :attr:`max_maxlen`.
        """
        if asked is not None and asked > self.max_maxlen:
            raise InvalidInputError(
                f"maxlen must be at most {self.max_maxlen} (this service's maximum), got {asked}"
            )
        return default_maxlen(asked, live)
