"""Display orientation of decoded video frames: the rotation and mirror flips a player applies.

Phones store the picture as captured plus a display matrix that says how to turn it. FFmpeg's
decoders attach that matrix to every frame (``DISPLAYMATRIX`` side data, which PyAV 18 also reads
as ``VideoFrame.rotation``, counterclockwise degrees). Sources read the matrix of the first frame
and apply it to every frame, with its mirror flips, as ``ffmpeg -autorotate`` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.frames import Size

if TYPE_CHECKING:
    from av.video.frame import VideoFrame


@dataclass(frozen=True)
class Orientation:
    """How to turn a decoded HxWx3 picture into the one to display (a dihedral transform).

    Applied in this order: transpose the two image axes, then flip rows, then flip columns.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_display_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """From FFmpeg's 3x3 display matrix (9 ints, row-major, 16.16 fixed point).

        FFmpeg maps a source point (x, y) to the display point x' = a·x + c·y, y' = b·x + d·y,
        with a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4] (y pointing down). Angles
        that are not a multiple of 90° snap to the nearest one.
        """
        a, b, c, d = (float(matrix[i]) for i in (0, 1, 3, 4))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x' follows x: no transpose
            return cls(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
        return cls(transpose=True, flip_rows=b < 0, flip_cols=c < 0)

    @classmethod
    def from_rotation(cls, degrees: int) -> Orientation:
        """A pure counterclockwise rotation by a multiple of 90 degrees."""
        k = round(degrees / 90) % 4
        return (cls(), cls(True, True, False), cls(False, True, True), cls(True, False, True))[k]

    @property
    def rotation(self) -> int:
        """Counterclockwise degrees of the rotation part, in {0, 90, 180, 270} (as FFmpeg reads it)."""
        # The first column of the transform's matrix, (a, b), is where the x axis goes.
        a, b = (0, -1 if self.flip_rows else 1) if self.transpose else (-1 if self.flip_cols else 1, 0)
        return round(-math.degrees(math.atan2(b, a))) % 360

    def size(self, size: Size) -> Size:
        """(H, W) after the transform of an (H, W) picture."""
        return (size[1], size[0]) if self.transpose else size

    def apply(self, image: np.ndarray) -> np.ndarray:
        """HxW or HxWxC → the displayed picture, as a view of ``image`` where possible."""
        if self.transpose:
            image = image.swapaxes(0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return image


IDENTITY = Orientation()


def _display_matrix(frame: VideoFrame) -> list[int] | None:
    from av.sidedata.sidedata import Type

    side_data: Any = frame.side_data  # a SideDataContainer; PyAV 18's stub calls it a TypedDict
    data = side_data.get(Type.DISPLAYMATRIX)
    raw = bytes(data) if data is not None else b""
    return [int(v) for v in np.frombuffer(raw[:36], dtype=np.int32)] if len(raw) >= 36 else None


def orientation_of(frame: VideoFrame) -> Orientation:
    """The display orientation a decoded PyAV frame carries (identity when it has none)."""
    matrix = _display_matrix(frame)
    if matrix is not None:
        return Orientation.from_display_matrix(matrix)
    return Orientation.from_rotation(frame.rotation) if frame.rotation else IDENTITY
