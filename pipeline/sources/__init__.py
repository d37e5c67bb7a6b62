"""Video sources: PyAV readers that turn files, URLs and live feeds into :class:`~pipeline.frames.Frame` s.

PyAV is imported when a source is opened, not when this package is imported.
"""

from pipeline.sources.live import LiveSource
from pipeline.sources.orientation import Orientation
from pipeline.sources.video import SourceInfo, VideoSource

__all__ = ["LiveSource", "Orientation", "SourceInfo", "VideoSource"]
