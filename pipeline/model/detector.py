"""A user's own object detector: an ONNX model run through ONNX Runtime, whose boxes start tracks.

The contract (YOLO-style exports, as Ultralytics and YOLOv5 write them; ``docs/tracking.md``):

* **Input**: the model's first input, float32 (or float16) ``[1, 3, H, W]``, RGB scaled to [0, 1],
  the frame *letterboxed* into H×W (resized keeping its aspect, centred, padded with grey 114). A
  dynamic H or W is taken as 640.
* **Output**: the model's first output, ``[1, 4 + C, N]`` (YOLOv8/11: a box ``cx, cy, w, h`` in
  input pixels, then C class scores, for each of N candidates), or ``[1, N, 4 + C]`` (the same,
  transposed), or ``[1, N, 5 + C]`` (YOLOv5: the box, an objectness, then C class scores; told
  from the others by the class names' count). No non-maximum suppression inside: it is done here,
  per class.
* **Class names**: the model's metadata ``names`` (Ultralytics writes ``{0: 'person', ...}``; a
  JSON list works too); without it, the classes are named by their index (``"0"``, ``"1"``, ...).

A detection is kept when its score (class score, times objectness for YOLOv5) reaches
``min_score`` and its class is one of ``classes`` (None: any); overlapping boxes of one class keep
the best scored (IoU above ``nms_iou``). Boxes come back in the frame's pixels.

A model that is missing, not ONNX, or of another contract is one :class:`InvalidInputError` from
:func:`open_detector`, which also runs the model once on a blank picture to learn its output.
"""

from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InvalidInputError

DYNAMIC_SIZE = 640  # a dynamic input side is taken as this (the size YOLO models are trained at)
PAD = 114  # the letterbox's grey
MAX_DETECTIONS = 100  # kept a frame, best scored first
NMS_IOU = 0.5
MAX_FILE_BYTES = 1 << 30  # a detector file is at most 1 GiB


@dataclass(frozen=True)
class Detection:
    """One object a detector found.

    Attributes:
        box: (x0, y0, x1, y1) in the frame's pixels.
        score: its score in [0, 1].
        label: its class's name.
        class_id: its class's index.
    """

    box: tuple[float, float, float, float]
    score: float
    label: str
    class_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in self.box], "score": round(self.score, 4), "label": self.label}


@dataclass(frozen=True)
class Layout:
    """How a model's output reads: ``transposed`` (``[1, 4 + C, N]``) or rows; with objectness
    (YOLOv5) or not."""

    transposed: bool
    objectness: bool
    classes: int


class Detector:
    """An opened detector (see the module's docstring); made by :func:`open_detector`.

    Attributes:
        path: the model file.
        names: the classes' names, by index.
        input_size: (H, W) the frame is letterboxed into.
    """

    def __init__(
        self,
        session: Any,
        path: str,
        names: tuple[str, ...] | None,
        min_score: float,
        classes: Sequence[str] | None,
    ) -> None:
        self._session = session
        self.path = path
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        self._dtype = np.float16 if "float16" in model_input.type else np.float32
        self.input_size = _input_size(model_input, path)
        self.min_score = min_score
        self.layout = self._learn_layout(names)
        self.names = names if names is not None else tuple(str(i) for i in range(self.layout.classes))
        self.classes = None if classes is None else tuple(classes)
        self._allowed: np.ndarray | None = None
        if self.classes is not None:
            unknown = [c for c in self.classes if c not in self.names]
            if unknown:
                raise InvalidInputError(
                    f"detector {path}: no class named {', '.join(map(repr, unknown))}; "
                    f"its classes: {', '.join(self.names[:40])}{' ...' if len(self.names) > 40 else ''}"
                )
            self._allowed = np.array([n in self.classes for n in self.names])

    def detect(self, rgb: np.ndarray, original_size: tuple[int, int]) -> list[Detection]:
        """The objects in one picture (``rgb``: (h, w, 3) uint8, the frame at any scale;
        ``original_size``: (H, W) of the frame the boxes are given in), best scored first."""
        tensor, scale, pad = letterbox(rgb, self.input_size)
        out = self._session.run(None, {self._input_name: tensor.astype(self._dtype)})[0]
        rows = _rows(np.asarray(out, dtype=np.float32), self.layout)
        boxes, scores, ids = self._keep(rows)
        height, width = original_size
        sx, sy = width / rgb.shape[1], height / rgb.shape[0]
        found = []
        for box, score, cid in zip(boxes, scores, ids, strict=True):
            cx, cy, w, h = (float(v) for v in box)
            x0 = (cx - w / 2 - pad[0]) / scale * sx
            y0 = (cy - h / 2 - pad[1]) / scale * sy
            x1 = (cx + w / 2 - pad[0]) / scale * sx
            y1 = (cy + h / 2 - pad[1]) / scale * sy
            x0, x1 = max(0.0, x0), min(float(width), x1)
            y0, y1 = max(0.0, y0), min(float(height), y1)
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            found.append(Detection((x0, y0, x1, y1), float(score), self.names[int(cid)], int(cid)))
        return found

    def _keep(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows that pass the score and class limits, suppressed per class, best first."""
        layout = self.layout
        first = 5 if layout.objectness else 4
        class_scores = rows[:, first:]
        if layout.objectness:
            class_scores = class_scores * rows[:, 4:5]
        if self._allowed is not None:
            class_scores = np.where(self._allowed[None, :], class_scores, -np.inf)
        ids = np.argmax(class_scores, axis=1)
        scores = class_scores[np.arange(len(rows)), ids]
        keep = np.nonzero(np.isfinite(scores) & (scores >= self.min_score))[0]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        chosen: list[int] = []
        for i in keep:
            if len(chosen) >= MAX_DETECTIONS:
                break
            if all(ids[j] != ids[i] or _iou_cxcywh(rows[i, :4], rows[j, :4]) <= NMS_IOU for j in chosen):
                chosen.append(int(i))
        return rows[chosen, :4], scores[chosen], ids[chosen]

    def _learn_layout(self, names: tuple[str, ...] | None) -> Layout:
        """The output's layout, from one run on a blank picture (a symbolic shape says too little)."""
        height, width = self.input_size
        blank = np.full((1, 3, height, width), PAD / 255.0, dtype=self._dtype)
        try:
            out = self._session.run(None, {self._input_name: blank})[0]
        except Exception as exc:
            raise InvalidInputError(
                f"detector {self.path}: it does not run on a [1, 3, {height}, {width}] picture: {_line(exc)}"
            ) from None
        shape = tuple(np.shape(out))
        if len(shape) != 3 or shape[0] != 1:
            raise InvalidInputError(
                f"detector {self.path}: its first output must be [1, 4 + classes, boxes] or "
                f"[1, boxes, 4 (+1) + classes] (YOLO-style), got {list(shape)}"
            )
        a, b = shape[1], shape[2]
        if names is not None:
            c = len(names)
            for transposed, objectness, width_ in ((True, False, a), (False, False, b), (False, True, b)):
                if width_ == (5 if objectness else 4) + c:
                    return Layout(transposed, objectness, c)
            raise InvalidInputError(
                f"detector {self.path}: its output {list(shape)} does not fit its {c} class names "
                f"(expected [1, {4 + c}, boxes], [1, boxes, {4 + c}] or [1, boxes, {5 + c}])"
            )
        transposed = a < b
        c = (a if transposed else b) - 4
        if c < 1:
            raise InvalidInputError(
                f"detector {self.path}: its output {list(shape)} has no class scores "
                "(expected [1, 4 + classes, boxes] or [1, boxes, 4 + classes])"
            )
        return Layout(transposed, False, c)


def open_detector(
    path: str | os.PathLike[str], min_score: float = 0.25, classes: Sequence[str] | None = None
) -> Detector:
    """Open a detector file and check its contract (see the module's docstring).

    Raises:
        InvalidInputError: no such file, not a model ONNX Runtime loads, another input or output
            than the contract's, or a class in ``classes`` the model does not name.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise InvalidInputError(f"detector {name}: no such file")
    if os.path.getsize(name) > MAX_FILE_BYTES:
        raise InvalidInputError(f"detector {name}: larger than {MAX_FILE_BYTES >> 20} MiB")
    if not 0 <= min_score <= 1:
        raise InvalidInputError(f"detector score must be in [0, 1], got {min_score:g}")
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency; a broken install says so
        raise InvalidInputError("a detector needs onnxruntime: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # beside the decode threads of many streams
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(name, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidInputError(
            f"detector {name}: not an ONNX model ONNX Runtime can load: {_line(exc)}"
        ) from None
    metadata = session.get_modelmeta().custom_metadata_map or {}
    return Detector(session, name, parse_names(metadata.get("names"), name), min_score, classes)


def parse_names(text: str | None, path: str = "detector") -> tuple[str, ...] | None:
    """Class names from a model's ``names`` metadata: ``{0: 'person', ...}`` (Ultralytics) or a
    JSON list; None when absent.

    Raises:
        InvalidInputError: present but neither.
    """
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)  # literals only: never runs code
        except (ValueError, SyntaxError):
            value = None
    if isinstance(value, dict) and value:
        by_index = {_index(k): str(v) for k, v in value.items()}
        if sorted(by_index, key=lambda k: -1 if k is None else k) == list(range(len(value))):
            return tuple(by_index[i] for i in range(len(value)))
    if isinstance(value, list) and value:
        return tuple(str(v) for v in value)
    raise InvalidInputError(
        f"{path}: its metadata 'names' must be {{0: 'name', 1: ...}} or a list of names, got {text[:80]!r}"
    )


def _index(key: Any) -> int | None:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    return int(key) if isinstance(key, str) and key.isdigit() else None


def letterbox(rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, tuple[float, float]]:
    """``rgb`` resized into ``size`` (H, W) keeping its aspect, centred on grey: a [1, 3, H, W]
    float32 tensor in [0, 1], the scale and the (x, y) padding in the tensor's pixels."""
    from PIL import Image

    height, width = size
    h, w = rgb.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(
        Image.fromarray(np.ascontiguousarray(rgb)).resize((nw, nh), Image.Resampling.BILINEAR)
    )
    canvas = np.full((height, width, 3), PAD, dtype=np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return tensor, scale, (float(left), float(top))


def _input_size(model_input: Any, path: str) -> tuple[int, int]:
    shape = list(model_input.shape)
    if len(shape) != 4 or shape[1] != 3 or (shape[0] not in (1, None) and not isinstance(shape[0], str)):
        raise InvalidInputError(
            f"detector {path}: its input must be a [1, 3, height, width] RGB picture, got {shape}"
        )
    if "float" not in model_input.type:
        raise InvalidInputError(f"detector {path}: its input must be float, got {model_input.type}")
    sides = [s if isinstance(s, int) and s > 0 else DYNAMIC_SIZE for s in shape[2:]]
    return sides[0], sides[1]


def _rows(out: np.ndarray, layout: Layout) -> np.ndarray:
    rows = out[0].T if layout.transposed else out[0]
    return rows[np.all(np.isfinite(rows[:, :4]), axis=1)]


def _iou_cxcywh(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return float(inter / union) if union > 0 and math.isfinite(union) else 0.0


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
