"""Tracking by prompt propagation: per-track state, carried from frame to frame.

Plain Python (numpy only at import); the model is reached through the :class:`Segmenter` protocol.
"""

from pipeline.tracking.state import MaskBox, TrackingConfig, TrackState, TrackStatus
from pipeline.tracking.tracker import (
    EventKind,
    Segmenter,
    StepPlan,
    Tracker,
    TrackEvent,
    TrackPromptError,
    TrackResult,
)

__all__ = [
    "EventKind",
    "MaskBox",
    "Segmenter",
    "StepPlan",
    "TrackEvent",
    "TrackPromptError",
    "TrackResult",
    "TrackState",
    "TrackStatus",
    "Tracker",
    "TrackingConfig",
]
