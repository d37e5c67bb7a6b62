"""Video sources: PyAV readers that turn files and URLs into :class:`~pipeline.frames.Frame` s.

PyAV is imported when a source is opened, not when this package is imported.
"""

from pipeline.sources.video import Orientation, SourceInfo, VideoSource

__all__ = ["Orientation", "SourceInfo", "VideoSource"]
