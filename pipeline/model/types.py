"""Values that cross the model boundary (and process boundaries): plain, frozen, picklable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import InvalidInputError
from pipeline.prompts import Prompt

if TYPE_CHECKING:
    import torch

Size = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Embedding:
    """The image embedding of one frame.

    Attributes:
        features: (256, S/16, S/16) float32 tensor, S the encoder input size.
        original_size: (H, W) of the frame as decoded.
        input_size: (h, w) of the frame resized so that its long side is S (before padding).
    """

    features: torch.Tensor
    original_size: Size
    input_size: Size


@dataclass(frozen=True)
class DecodeRequest:
    """What to decode for one track on one frame.

    Attributes:
        prompt: points and/or box in original-frame pixels.
        mask_input: (S/4, S/4) float32 low-resolution logits of a previous decode, or None.
        multimask: pick the best of SAM's three masks by predicted IoU (``None``: when the prompt
            is a single point, as SAM's predictor is meant to be used).
        low_res_only: only its score and low-resolution logits are wanted: a model may leave its
            frame-sized mask empty (discovery's grid judges hundreds of prompts by their logits;
            bringing each mask to the frame's size would cost most of the frame's time).
    """

    prompt: Prompt
    mask_input: np.ndarray | None = None
    multimask: bool | None = None
    low_res_only: bool = False

    def __post_init__(self) -> None:
        if self.prompt.mask is not None:  # a model would silently decode the prompt without it
            raise InvalidInputError("a mask prompt must be made a request by DecodeRequest.of")

    @classmethod
    def of(cls, prompt: Prompt, embedding: Embedding, low_res_size: int) -> DecodeRequest:
        """The request of a user's prompt on a frame.

        A prompt without a mask is decoded as it is. A mask prompt becomes what SAM's predictor
        takes for a mask: the mask as low-resolution mask input (:func:`~pipeline.masks.mask_prompt.
        mask_logits`), the box around it (unless the prompt gives one) and its points, decoded
        without multimask.

        Args:
            prompt: the prompt; its mask, if any, must be of the frame's size (``check_inside``).
            embedding: the frame's embedding (its sizes place the mask in the encoder's input).
            low_res_size: S/4, the side of the model's mask input.
        """
        if prompt.mask is None:
            return cls(prompt)
        from pipeline.masks.mask_prompt import mask_logits

        logits = mask_logits(prompt.mask.array(), embedding.input_size, low_res_size)
        box = prompt.box if prompt.box is not None else tuple(float(v) for v in prompt.mask.box)
        plain = Prompt(prompt.points, prompt.labels, box)  # type: ignore[arg-type]
        return cls(plain, logits, multimask=False)

    @property
    def use_multimask(self) -> bool:
        return self.prompt.multimask if self.multimask is None else self.multimask


@dataclass(frozen=True)
class MaskBatch:
    """Decoded masks for K requests, in request order.

    Attributes:
        masks: (K, H, W) bool at the frame's original resolution.
        scores: (K,) float32 predicted IoU of each mask.
        logits: (K, S/4, S/4) float32 low-resolution logits (the next frame's mask input).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])
