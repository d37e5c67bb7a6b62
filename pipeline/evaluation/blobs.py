"""A reference detector: flat-coloured blobs, as an ONNX model of the detector contract.

No detector weights can be downloaded here, so the tests and the bench make this one: a small torch
module that finds the pixels of each named colour, exported to ONNX (YOLOv8's output layout, the
class names in its metadata) and run through the real ONNX Runtime path like any user's model
(:mod:`pipeline.model.detector`). It is a stand-in for a trained detector, not one: it knows only
colours, such as the discs of :func:`~pipeline.evaluation.scenes.entering_scene`.

Each cell of a ``stride`` grid is one candidate: its class scores are the share of its own pixels
within ``tolerance`` of each colour; its box is centred on the coloured pixels of a ``window``
around it, as wide as a disc of their area. Blobs should be smaller than the window and apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 200, 30),
    "magenta": (200, 60, 210),
    "cyan": (30, 200, 210),
}  # the entering scene's discs, in order


def blob_module(colours: Mapping[str, tuple[int, int, int]], size: int, stride: int, window: int):
    """The torch module (input [1, 3, size, size] in [0, 1]; output [1, 4 + C, cells])."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Blobs(nn.Module):
        colours: torch.Tensor
        xs: torch.Tensor
        ys: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer(
                "colours", torch.tensor([c for c in colours.values()], dtype=torch.float32) / 255
            )
            ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
            self.register_buffer("xs", xs[None, None].float())
            self.register_buffer("ys", ys[None, None].float())

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            # (1, C, H, W): 1 where a pixel is within about 0.1 of a colour in every channel.
            distance = (images[:, None] - self.colours[None, :, :, None, None]).abs().amax(dim=2)
            match = (1.5 - 6 * distance).clamp(0, 1)
            scores = F.avg_pool2d(match, stride, stride)  # (1, C, S, S): each cell's own share
            anything = match.sum(dim=1, keepdim=True)
            pad = (window - stride) // 2
            pool = lambda t: F.avg_pool2d(t, window, stride, pad, count_include_pad=True)  # noqa: E731
            mass = pool(anything).clamp(min=1e-6)
            cx, cy = pool(anything * self.xs) / mass, pool(anything * self.ys) / mass
            side = 2 * torch.sqrt(mass * window * window / torch.pi)
            boxes = torch.cat([cx, cy, side, side], dim=1)  # (1, 4, S, S)
            return torch.cat([boxes, scores], dim=1).flatten(2)

    return Blobs().eval()


def export_blob_detector(
    path: str | Path,
    colours: Mapping[str, tuple[int, int, int]] | None = None,
    size: int = 160,
    stride: int = 8,
    window: int = 40,
) -> Path:
    """Write the reference detector to ``path`` (an ONNX file of the detector contract, its class
    names the colours' names) and return the path. Needs ``onnx`` (torch's exporter writes with it)."""
    import onnx
    import torch

    colours = dict(COLOURS if colours is None else colours)
    path = Path(path)
    module = blob_module(colours, size, stride, window)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # the TorchScript exporter: still the one for this
        torch.onnx.export(
            module,
            (torch.zeros(1, 3, size, size),),
            str(path),
            input_names=["images"],
            output_names=["output0"],
            opset_version=17,
            dynamo=False,
        )
    model = onnx.load(str(path))
    names = {i: name for i, name in enumerate(colours)}
    entry = model.metadata_props.add()
    entry.key, entry.value = "names", repr(names)  # as Ultralytics writes them
    onnx.save(model, str(path))
    return path


def blob_truth(frame: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """The pixels of ``frame`` (RGB) within the detector's tolerance of ``colour``."""
    return np.abs(frame.astype(np.int16) - np.array(colour, dtype=np.int16)).max(axis=2) <= 25
