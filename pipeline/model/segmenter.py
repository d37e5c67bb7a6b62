"""MobileSAM behind a split API: ``encode`` frames once, ``decode`` any number of tracks per frame."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.config import Compile, DeviceKind, ModelConfig, Weights
from pipeline.errors import InvalidInputError
from pipeline.frames import Yuv420
from pipeline.model.architecture import build_mobile_sam
from pipeline.model.transforms import (
    check_frame,
    input_size,
    resize_longest,
    scale_xy,
    to_model_input,
    upscale_logits,
)
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch, Size
from pipeline.model.weights import check_layout, load_state_dict, resolve_checkpoint

if TYPE_CHECKING:
    import torch
    from kornia.models.sam import Sam

RANDOM_WEIGHTS_NOTICE = "random weights (--weights random): a smoke test, the masks mean nothing"


def pick_device(kind: DeviceKind) -> torch.device:
    import torch

    if kind is DeviceKind.CUDA:
        if not torch.cuda.is_available():
            raise InvalidInputError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda")
    if kind is DeviceKind.AUTO and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_sam(config: ModelConfig) -> Sam:
    """Build MobileSAM at ``config.image_size`` with the configured weights (strict load)."""
    import torch

    if config.weights is Weights.RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return build_mobile_sam(config.image_size)
    model = build_mobile_sam(config.image_size)
    path = resolve_checkpoint(config.checkpoint, config.cache_dir)
    state = load_state_dict(path)
    check_layout(state, model.state_dict(), f"checkpoint {path}")
    model.load_state_dict(state, strict=True)
    return model.eval()


class MobileSam:
    """Encode frames and decode prompts with MobileSAM.

    Args:
        sam: a kornia ``Sam`` in the MobileSAM layout, built for ``image_size``.
        image_size: encoder input side S.
        device: where the model runs.
        dtype: the precision of the image encoder and mask decoder (float32: the official
            predictor's results).
        compile: see :class:`~pipeline.config.Compile` (``eager``: kornia's modules as they are).
        cache_dir: the samstream cache (compiled packages live under it).
        random_weights: the weights are random (reported by :attr:`notice`).
        config: the config the model was built from; with it, compiled packages can be built in
            the background (:mod:`pipeline.model.background`).
        tracks: prompts per frame, if known (whether compiling the mask decoder pays off).
    """

    def __init__(
        self,
        sam: Sam,
        image_size: int,
        device: torch.device,
        dtype: torch.dtype | None = None,
        compile: Compile = Compile.EAGER,
        cache_dir: Path | None = None,
        random_weights: bool = False,
        config: ModelConfig | None = None,
        tracks: int | None = None,
    ) -> None:
        import torch

        from pipeline.model.runners import EncoderRunner, MaskDecoderRunner

        self.sam = sam.to(device).eval()
        self.image_size = image_size
        self.device = device
        self.dtype = dtype or torch.float32
        self.random_weights = random_weights
        self.encoder = EncoderRunner(
            self.sam.image_encoder, device, image_size, self.dtype, compile, cache_dir, config
        )
        self.mask_decoder = MaskDecoderRunner(
            self.sam.mask_decoder,
            self.sam.prompt_encoder,
            device,
            image_size,
            self.dtype,
            compile,
            cache_dir,
            config,
            tracks,
        )
        self._dense_pe: torch.Tensor | None = None

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's positional encoding of the embedding grid (the same for every frame:
        made once, not at every decode)."""
        if self._dense_pe is None:
            import torch

            with torch.inference_mode():
                self._dense_pe = self.sam.prompt_encoder.get_dense_pe()
        return self._dense_pe

    @classmethod
    def from_config(cls, config: ModelConfig, tracks: int | None = None) -> MobileSam:
        """Build the configured model.

        Args:
            config: the model config.
            tracks: how many tracks this instance will decode per frame, if known (with
                ``config.workload_frames``: whether compiling the mask decoder pays off).
        """
        from pipeline.model.precision import resolve

        device = pick_device(config.device)
        return cls(
            load_sam(config),
            config.image_size,
            device,
            resolve(config.precision, device),
            config.compile,
            config.cache_dir,
            random_weights=config.weights is Weights.RANDOM,
            config=config,
            tracks=tracks,
        )

    def warm(self, encoder: bool = False, decoder: bool = False) -> None:
        """Prepare the image encoder and/or the mask decoder now (load their packages, or make
        their eager modules) rather than at their first call: a worker's first frame does not wait."""
        if encoder:
            self.encoder.ready()
        if decoder:
            self.mask_decoder.ready()

    @property
    def precision(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``."""
        from pipeline.model.precision import name

        return name(self.dtype)

    @property
    def notice(self) -> str | None:
        """A line every output made with this model must carry, or None."""
        return RANDOM_WEIGHTS_NOTICE if self.random_weights else None

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution logits (S/4)."""
        return self.image_size // 4

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB → the same resized so that its long side is S (CPU, PIL bilinear)."""
        return resize_longest(image, self.image_size)

    def encode(
        self, frames: Sequence[np.ndarray | Yuv420], original_sizes: Sequence[Size] | None = None
    ) -> list[Embedding]:
        """Image embeddings of a batch of frames.

        Args:
            frames: HxWx3 uint8 RGB frames, or a source's :class:`~pipeline.frames.Yuv420` frames
                (at their own size; converted and resized on the device). Without
                ``original_sizes`` RGB frames are at their own resolution and are resized here;
                with it, they were resized by :meth:`prepare`.
            original_sizes: (H, W) of each frame before :meth:`prepare`.

        Returns:
            One :class:`Embedding` per frame, features on the CPU as float32.
        """
        import torch

        if not frames:
            return []
        if original_sizes is not None and len(original_sizes) != len(frames):
            raise InvalidInputError(f"got {len(frames)} frames but {len(original_sizes)} original sizes")
        inputs: list[np.ndarray | Yuv420] = []
        originals: list[Size] = []
        sizes: list[Size] = []
        for i, f in enumerate(frames):
            if isinstance(f, Yuv420):
                orig = (f.shape[0], f.shape[1])
                inputs.append(f)
                originals.append(orig)
                sizes.append(input_size(orig, self.image_size))
                continue
            check_frame(f)
            if original_sizes is None:
                orig, resized = (int(f.shape[0]), int(f.shape[1])), self.prepare(f)
            else:
                orig, resized = (int(original_sizes[i][0]), int(original_sizes[i][1])), f
            size = (int(resized.shape[0]), int(resized.shape[1]))
            if input_size(orig, self.image_size) != size:
                raise InvalidInputError(
                    f"frame {i} is {size[1]}x{size[0]}, but a {orig[1]}x{orig[0]} frame resizes to "
                    f"{input_size(orig, self.image_size)[::-1]} at image size {self.image_size}"
                )
            inputs.append(resized)
            originals.append(orig)
            sizes.append(size)
        with torch.inference_mode():
            x = to_model_input(inputs, self.image_size, self.device, torch.float32)
            feats = self.encoder(x).cpu()
        return [Embedding(feats[i], originals[i], sizes[i]) for i in range(len(inputs))]

    def decode(self, embedding: Embedding, requests: Sequence[DecodeRequest]) -> MaskBatch:
        """Masks for K requests on one frame, batched.

        Requests with the same shape of prompt (number of points, box or not, mask input or not,
        multimask or not) go through the decoder together, so each mask equals what a single call
        with that request alone gives.
        """
        import torch

        k = len(requests)
        h, w = embedding.original_size
        low = self.low_res_size
        if k == 0:
            return MaskBatch(
                np.zeros((0, h, w), bool), np.zeros(0, np.float32), np.zeros((0, low, low), np.float32)
            )
        groups: dict[tuple[int, bool, bool, bool], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            if r.mask_input is not None and r.mask_input.shape != (low, low):
                raise InvalidInputError(f"mask_input must be {low}x{low}, got {r.mask_input.shape}")
            key = (len(r.prompt.points), r.prompt.box is not None, r.mask_input is not None, r.use_multimask)
            groups[key].append(i)

        logits = torch.empty((k, 1, low, low), dtype=torch.float32)
        scores = torch.empty(k, dtype=torch.float32)
        with torch.inference_mode():
            features = embedding.features.to(self.device, torch.float32)[None]
            image_pe = self.dense_pe()
            for (n_points, has_box, has_mask, multimask), idx in groups.items():
                group_logits, group_scores = self._decode_group(
                    features,
                    image_pe,
                    [requests[i] for i in idx],
                    [embedding] * len(idx),
                    n_points,
                    has_box,
                    has_mask,
                    multimask,
                )
                logits[idx] = group_logits.cpu()
                scores[idx] = group_scores.cpu()
            wanted = [i for i, r in enumerate(requests) if not r.low_res_only]
            # zeros: the pages of the masks left empty (low_res_only) are never touched
            masks = np.zeros((k, h, w), dtype=bool) if len(wanted) < k else np.empty((k, h, w), dtype=bool)
            on_device = (logits if len(wanted) == k else logits[wanted]).to(self.device)  # no copy: all
            # One mask at a time on a CPU: two full-size bilinear passes over K masks at once fall
            # out of cache (measured 2.5x slower at K=16, 720p); a GPU takes them all at once.
            step = max(1, len(wanted)) if self.device.type == "cuda" else 1
            for i in range(0, len(wanted), step):
                full = upscale_logits(
                    on_device[i : i + step], embedding.input_size, embedding.original_size, self.image_size
                )
                masks[wanted[i : i + step]] = (full > self.sam.mask_threshold).cpu().numpy()
        return MaskBatch(masks, scores.numpy(), logits[:, 0].numpy())

    def decode_many(
        self, items: Sequence[tuple[Embedding, Sequence[DecodeRequest]]], across_frames: bool | None = None
    ) -> list[MaskBatch]:
        """Masks for the requests of several frames (of any jobs), one :class:`MaskBatch` per frame.

        On a GPU (``across_frames`` None) the requests of every frame go through the mask decoder
        together, one call per prompt shape: SAM's decoder adds the image embedding to the dense
        prompt embedding of each prompt before anything else, so each prompt carries its own
        frame's embedding in its dense embedding (and the shared one is zero). Each mask equals
        what :meth:`decode` of its frame gives. On a CPU the frames are decoded one at a time: a
        large batch falls out of cache (``samstream bench --suite decoder``).
        """
        across = self.device.type == "cuda" if across_frames is None else across_frames
        if not across or len(items) < 2:
            return [self.decode(embedding, requests) for embedding, requests in items]
        import torch

        flat = [(f, r) for f, (_, requests) in enumerate(items) for r in requests]
        low = self.low_res_size
        for _, r in flat:
            if r.mask_input is not None and r.mask_input.shape != (low, low):
                raise InvalidInputError(f"mask_input must be {low}x{low}, got {r.mask_input.shape}")
        groups: dict[tuple[int, bool, bool, bool], list[int]] = defaultdict(list)
        for i, (_, r) in enumerate(flat):
            key = (len(r.prompt.points), r.prompt.box is not None, r.mask_input is not None, r.use_multimask)
            groups[key].append(i)
        k = len(flat)
        logits = torch.empty((k, 1, low, low), dtype=torch.float32, device=self.device)
        scores = torch.empty(k, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            features = torch.stack([e.features for e, _ in items]).to(self.device, torch.float32)
            image_pe = self.dense_pe()
            for (n_points, has_box, has_mask, multimask), idx in groups.items():
                frames = [flat[i][0] for i in idx]
                group_logits, group_scores = self._decode_group(
                    features[frames],
                    image_pe,
                    [flat[i][1] for i in idx],
                    [items[f][0] for f in frames],
                    n_points,
                    has_box,
                    has_mask,
                    multimask,
                )
                logits[idx] = group_logits
                scores[idx] = group_scores
            out = []
            at = 0
            for embedding, requests in items:
                n = len(requests)
                h, w = embedding.original_size
                if n == 0:
                    out.append(self.decode(embedding, ()))
                    continue
                mine = logits[at : at + n]
                wanted = [i for i, r in enumerate(requests) if not r.low_res_only]
                if len(wanted) == n:  # every mask frame-sized (no discovery): no copy
                    full = upscale_logits(
                        mine, embedding.input_size, embedding.original_size, self.image_size
                    )
                    masks = (full > self.sam.mask_threshold).cpu().numpy().reshape(n, h, w)
                else:
                    masks = np.zeros((n, h, w), dtype=bool)
                    if wanted:
                        full = upscale_logits(
                            mine[wanted], embedding.input_size, embedding.original_size, self.image_size
                        )
                        masks[wanted] = (
                            (full > self.sam.mask_threshold).cpu().numpy().reshape(len(wanted), h, w)
                        )
                out.append(MaskBatch(masks, scores[at : at + n].cpu().numpy(), mine[:, 0].cpu().numpy()))
                at += n
        return out

    def _decode_group(
        self,
        features: torch.Tensor,
        image_pe: torch.Tensor,
        requests: list[DecodeRequest],
        embeddings: Sequence[Embedding],
        n_points: int,
        has_box: bool,
        has_mask: bool,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-decoder call for requests of one prompt shape: (K, 1, S/4, S/4) logits of the
        best mask of each, and its predicted IoU.

        ``embeddings[i]`` is the frame of request i (sizes for its coordinates). ``features`` is
        that frame's (1, C, h, w) embedding when every request is on one frame, else (K, C, h, w),
        one per request: SAM's decoder adds the image embedding to each prompt's dense embedding
        first, so each prompt then carries its own frame's in its dense embedding.
        """
        import torch

        dev = self.device
        points = None
        if n_points:
            xy = np.stack(
                [
                    scale_xy(np.array(r.prompt.points, np.float32), e.original_size, e.input_size)
                    for r, e in zip(requests, embeddings, strict=True)
                ]
            )
            labels = np.array([r.prompt.labels for r in requests], np.float32)
            points = (torch.from_numpy(xy).to(dev), torch.from_numpy(labels).to(dev))
        boxes = None
        if has_box:
            corners = [
                scale_xy(np.array(r.prompt.box, np.float32).reshape(2, 2), e.original_size, e.input_size)
                for r, e in zip(requests, embeddings, strict=True)
            ]
            boxes = torch.from_numpy(np.stack(corners).reshape(-1, 4)).to(dev)
        masks = None
        if has_mask:
            stacked = np.stack([np.asarray(r.mask_input, np.float32) for r in requests])
            masks = torch.from_numpy(stacked)[:, None].to(dev)
        if self.mask_decoder.takes_masks and features.shape[0] == 1:
            # The CPU part takes the mask inputs as they are (its mask path is compiled with it).
            sparse, _ = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            low_res, iou = self.mask_decoder.with_masks(features, image_pe, sparse, masks, multimask)
            return _best(low_res, iou, multimask)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=masks)
        image = features
        if features.shape[0] > 1:  # prompts of several frames: each frame's embedding in its prompts
            if dense.shape[0] != len(requests):  # no mask input: one "no mask" embedding for all
                dense = dense.expand(len(requests), -1, -1, -1)
            image, dense = torch.zeros_like(features[:1]), dense + features
        low_res, iou = self.mask_decoder(
            image_embeddings=image,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return _best(low_res, iou, multimask)


def _best(low_res: torch.Tensor, iou: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask each prompt gives (the best of three by predicted IoU when ``multimask``): (K, 1, h, w), (K,)."""
    import torch

    if multimask:
        best = iou.argmax(dim=1)
        rows = torch.arange(low_res.shape[0], device=iou.device)
        return low_res[rows, best][:, None], iou[rows, best]
    return low_res[:, :1], iou[:, 0]


def load_model(config: ModelConfig, tracks: int | None = None) -> Any:
    """The model a worker runs: :class:`MobileSam`, the benchmark's null model, or the reference
    segmenter of the tests' flat-coloured scenes."""
    if config.weights is Weights.NULL:
        from pipeline.model.null import NullModel

        return NullModel(config.image_size)
    if config.weights is Weights.REFERENCE:
        from pipeline.evaluation.reference import ReferenceModel

        return ReferenceModel(config.image_size)
    return MobileSam.from_config(config, tracks)
