"""Video sources: PyAV readers that turn files, URLs and live feeds into :class:`~pipeline.frames.Frame` s.

PyAV is imported when a source is opened, not when this package is imported; the sources
themselves (and numpy with them) when first named, so that the CLI can read
:mod:`pipeline.sources.limits` for its defaults and still start at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.sources.live import LiveSource
    from pipeline.sources.orientation import Orientation
    from pipeline.sources.video import SourceInfo, VideoSource

__all__ = ["LiveSource", "Orientation", "SourceInfo", "VideoSource"]

_HOMES = {
    "LiveSource": "pipeline.sources.live",
    "Orientation": "pipeline.sources.orientation",
    "SourceInfo": "pipeline.sources.video",
    "VideoSource": "pipeline.sources.video",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
