"""Typed configuration, validated once at the edge and passed down.

Only the CLI (and the API server) read the environment; library code takes these objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pipeline.errors import InvalidInputError

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 4096  # the encoder's input side; it takes multiples of 16


def is_image_size(value: object) -> bool:
    """Whether ``value`` is an encoder input size: an int, a multiple of 16, 64 to 4096."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE
        and value % 16 == 0
    )


IMAGE_SIZE_RULE = f"a multiple of 16 from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"


class Weights(str, Enum):
    """Where the model's weights come from."""

    OFFICIAL = "official"  # --checkpoint PATH, else the cached (downloaded once) release
    RANDOM = "random"  # a seeded random model: a smoke test, every output says so
    NULL = "null"  # no model at all (benchmarks of the machinery): a fixed ellipse per track
    # the reference segmenter (pipeline.evaluation.reference), not a model: flat-coloured test scenes
    REFERENCE = "reference"


class Compile(str, Enum):
    """Whether the model is compiled (``torch.compile``): ``auto`` compiles, ``eager`` does not."""

    AUTO = "auto"
    COMPILED = "compiled"
    EAGER = "eager"


class Precision(str, Enum):
    """The number format the encoder and mask decoder compute in.

    ``fp32`` agrees with the official predictor (exactly when eager); ``bf16`` and ``fp16`` trade a
    stated error for speed; ``auto`` picks per device (see :func:`pipeline.model.precision.resolve`).
    """

    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class DeviceKind(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def _enum(enum: type[Enum], value: object, what: str) -> Enum:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum)
        raise InvalidInputError(f"{what} must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True)
class ModelConfig:
    """How to build the MobileSAM model.

    Attributes:
        image_size: encoder input side in pixels (a multiple of 16); SAM's is 1024.
        device: ``auto`` picks CUDA when present, else CPU.
        precision: the number format of encoder and mask decoder; ``fp32`` (the default) gives
            the official predictor's results, ``auto`` the fastest format this device does well.
        weights: ``official`` or ``random``.
        checkpoint: a checkpoint file in the official layout; with ``official`` weights and no file,
            the cached release is used (downloaded once).
        cache_dir: where the release is cached (default ``~/.cache/samstream``).
        seed: the seed of ``random`` weights.
        compile: ``auto`` answers at once (a prepared eager model, or compiled packages already
            cached) and builds the packages in a background process when that pays off over
            ``workload_frames``; ``compiled`` builds them first and waits; ``eager`` runs kornia's
            modules as they are.
        workload_frames: frames this model is expected to process (None: unknown, as for a live
            feed, a service or the Python API). Decides whether a background compile pays off.
    """

    image_size: int = 1024
    device: DeviceKind = DeviceKind.AUTO
    precision: Precision = Precision.FP32
    weights: Weights = Weights.OFFICIAL
    checkpoint: Path | None = None
    cache_dir: Path | None = None
    seed: int = 0
    compile: Compile = Compile.AUTO
    workload_frames: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", _enum(Precision, self.precision, "precision"))
        object.__setattr__(self, "compile", _enum(Compile, self.compile, "compile"))
        object.__setattr__(self, "device", _enum(DeviceKind, self.device, "device"))
        object.__setattr__(self, "weights", _enum(Weights, self.weights, "weights"))
        if not is_image_size(self.image_size):
            raise InvalidInputError(f"image size must be {IMAGE_SIZE_RULE}, got {self.image_size}")
        if self.weights is not Weights.OFFICIAL and self.checkpoint is not None:
            raise InvalidInputError(f"give either --checkpoint or --weights {self.weights.value}, not both")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint).expanduser())
