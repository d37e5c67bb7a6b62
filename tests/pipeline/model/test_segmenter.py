"""The model layer equals plain kornia and the official MobileSAM predictor on the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import InvalidInputError
from pipeline.model import DecodeRequest, MobileSam
from pipeline.model.transforms import input_size, resize_longest
from pipeline.prompts import Prompt
from tests.conftest import sample_rgb
from tests.fixtures.official import official_predictor

PROMPTS = [
    Prompt(points=((100.0, 120.0),), labels=(1,)),  # single point: best of three
    Prompt(box=(40.0, 60.0, 170.0, 190.0)),
    Prompt(points=((100.0, 120.0), (300.0, 40.0)), labels=(1, 0)),
    Prompt(points=((90.0, 110.0),), labels=(1,), box=(40.0, 60.0, 170.0, 190.0)),
]


@pytest.fixture(scope="module")
def model_1024(checkpoint: Path) -> MobileSam:
    return MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=1024, device="cpu", compile="eager")
    )


@pytest.fixture(scope="module")
def model_256(checkpoint: Path) -> MobileSam:
    return MobileSam.from_config(
        ModelConfig(checkpoint=checkpoint, image_size=256, device="cpu", compile="eager")
    )


@pytest.mark.parametrize(("h", "w"), [(240, 320), (1080, 1920), (333, 250), (1024, 1024), (17, 9)])
def test_input_size_rounds_like_sam(h: int, w: int) -> None:
    scale = 1024 / max(h, w)
    assert input_size((h, w), 1024) == (int(h * scale + 0.5), int(w * scale + 0.5))
    assert max(input_size((h, w), 1024)) == 1024


def test_resize_keeps_a_frame_already_at_size() -> None:
    img = sample_rgb(576, 1024)
    assert resize_longest(img, 1024) is img


@pytest.mark.slow
def test_encoder_and_decoder_equal_plain_kornia(model_1024: MobileSam, checkpoint: Path) -> None:
    from kornia.models.sam import Sam, SamConfig

    ref = Sam.from_config(SamConfig("mobile_sam", checkpoint=str(checkpoint))).eval()
    image = sample_rgb(240, 320)
    ours = model_1024.encode([image])[0]

    resized = torch.from_numpy(resize_longest(image, 1024).copy()).permute(2, 0, 1).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    x = torch.nn.functional.pad(
        (resized - mean) / std, (0, 1024 - resized.shape[2], 0, 1024 - resized.shape[1])
    )
    with torch.inference_mode():
        ref_features = ref.image_encoder(x[None])[0]
    assert (ours.features - ref_features).abs().max().item() <= 1e-4

    sx, sy = ours.input_size[1] / 320, ours.input_size[0] / 240
    for prompt in PROMPTS:
        got = model_1024.decode(ours, [DecodeRequest(prompt, multimask=False)])
        pts = None
        if prompt.points:
            xy = torch.tensor(prompt.points) * torch.tensor([sx, sy])
            pts = (xy[None], torch.tensor(prompt.labels, dtype=torch.float32)[None])
        box = torch.tensor(prompt.box).view(2, 2) * torch.tensor([sx, sy]) if prompt.box else None
        with torch.inference_mode():
            sparse, dense = ref.prompt_encoder(
                points=pts, boxes=None if box is None else box.view(1, 4), masks=None
            )
            low, iou = ref.mask_decoder(
                ref_features[None], ref.prompt_encoder.get_dense_pe(), sparse, dense, False
            )
        assert np.abs(got.logits[0] - low[0, 0].numpy()).max() <= 1e-4
        assert abs(float(got.scores[0]) - float(iou[0, 0])) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(("h", "w", "seed"), [(240, 320, 0), (480, 360, 1), (600, 1000, 2)])
def test_agrees_with_the_official_predictor(
    model_1024: MobileSam, checkpoint: Path, h: int, w: int, seed: int
) -> None:
    predictor = official_predictor(str(checkpoint))
    image = sample_rgb(h, w, seed)
    predictor.set_image(image)
    emb = model_1024.encode([image])[0]
    assert (emb.features - predictor.features[0]).abs().max().item() <= 1e-4
    for prompt in PROMPTS:
        ours = model_1024.decode(emb, [DecodeRequest(prompt)])
        masks, scores, logits = predictor.predict(
            point_coords=np.array(prompt.points) if prompt.points else None,
            point_labels=np.array(prompt.labels) if prompt.points else None,
            box=np.array(prompt.box) if prompt.box else None,
            multimask_output=prompt.multimask,
        )
        best = int(np.argmax(scores))
        assert abs(float(ours.scores[0]) - float(scores[best])) <= 1e-4
        assert np.abs(ours.logits[0] - logits[best]).max() <= 1e-3
        inter = np.logical_and(ours.masks[0], masks[best]).sum()
        union = np.logical_or(ours.masks[0], masks[best]).sum()
        assert union == 0 or inter / union >= 0.999

        # With the previous logits as mask input (how a track is followed), still the same.
        mask_in = ours.logits[0]
        again = model_1024.decode(emb, [DecodeRequest(prompt, mask_input=mask_in, multimask=False)])
        _, s2, l2 = predictor.predict(
            point_coords=np.array(prompt.points) if prompt.points else None,
            point_labels=np.array(prompt.labels) if prompt.points else None,
            box=np.array(prompt.box) if prompt.box else None,
            mask_input=mask_in[None],
            multimask_output=False,
        )
        assert abs(float(again.scores[0]) - float(s2[0])) <= 1e-4
        assert np.abs(again.logits[0] - l2[0]).max() <= 1e-3


def test_batched_decode_equals_single_calls(model_256: MobileSam) -> None:
    image = sample_rgb(240, 320)
    emb = model_256.encode([image])[0]
    rng = np.random.default_rng(0)
    requests = [DecodeRequest(p) for p in PROMPTS]
    requests += [
        DecodeRequest(
            Prompt(box=(10.0, 10.0, 200.0, 150.0)), mask_input=rng.normal(size=(64, 64)).astype(np.float32)
        ),
        DecodeRequest(Prompt(box=(50.0, 30.0, 250.0, 230.0)), multimask=True),
        DecodeRequest(Prompt(box=(60.0, 20.0, 260.0, 200.0)), multimask=True),
    ]
    batch = model_256.decode(emb, requests)
    assert batch.masks.shape == (len(requests), 240, 320) and batch.masks.dtype == bool
    assert batch.logits.shape == (len(requests), 64, 64)
    for i, r in enumerate(requests):
        one = model_256.decode(emb, [r])
        np.testing.assert_allclose(one.logits[0], batch.logits[i], atol=1e-4)
        np.testing.assert_allclose(one.scores[0], batch.scores[i], atol=1e-5)


def test_low_res_only_requests_skip_their_frame_sized_mask_alone(model_256: MobileSam) -> None:
    # Discovery's grid: the score and logits as ever, no frame-sized mask; the others' unchanged.
    emb = model_256.encode([sample_rgb(240, 320)])[0]
    box = DecodeRequest(Prompt(box=(50.0, 30.0, 250.0, 230.0)), multimask=True)
    grid = [
        DecodeRequest(Prompt(((x, 120.0),), (1,)), multimask=True, low_res_only=True)
        for x in (40.0, 160.0, 280.0)
    ]
    full = model_256.decode(emb, [box, *[DecodeRequest(r.prompt, multimask=True) for r in grid]])
    for got in (
        model_256.decode(emb, [box, *grid]),
        model_256.decode_many([(emb, [box, *grid]), (emb, [box])], True)[0],
    ):
        np.testing.assert_array_equal(got.masks[0], full.masks[0])
        assert not got.masks[1:].any()
        np.testing.assert_allclose(got.logits, full.logits, atol=1e-4)
        np.testing.assert_allclose(got.scores, full.scores, atol=1e-5)


def test_encode_batches_frames_of_different_sizes(model_256: MobileSam) -> None:
    a, b = sample_rgb(240, 320, 1), sample_rgb(300, 200, 2)
    together = model_256.encode([a, b])
    apart = model_256.encode([a]) + model_256.encode([b])
    for x, y in zip(together, apart, strict=True):
        assert x.original_size == y.original_size and x.input_size == y.input_size
        assert (x.features - y.features).abs().max().item() <= 1e-4


def test_prepared_frames_give_the_same_embedding(model_256: MobileSam) -> None:
    img = sample_rgb(240, 320)
    direct = model_256.encode([img])[0]
    prepared = model_256.encode([model_256.prepare(img)], original_sizes=[(240, 320)])[0]
    assert torch.equal(direct.features, prepared.features)
    assert prepared.original_size == (240, 320)


def test_bad_frames_are_clear_errors(model_256: MobileSam) -> None:
    with pytest.raises(InvalidInputError, match="HxWx3 uint8"):
        model_256.encode([np.zeros((10, 10), np.uint8)])
    with pytest.raises(InvalidInputError, match="resizes to"):
        model_256.encode([np.zeros((100, 100, 3), np.uint8)], original_sizes=[(240, 320)])
    emb = model_256.encode([sample_rgb(64, 64)])[0]
    with pytest.raises(InvalidInputError, match="mask_input must be 64x64"):
        model_256.decode(emb, [DecodeRequest(PROMPTS[1], mask_input=np.zeros((256, 256), np.float32))])


def test_random_weights_are_seeded_and_announced() -> None:
    a = MobileSam.from_config(ModelConfig(weights="random", image_size=256, device="cpu", compile="eager"))
    b = MobileSam.from_config(ModelConfig(weights="random", image_size=256, device="cpu", compile="eager"))
    assert a.notice and "random weights" in a.notice
    for (k, x), y in zip(a.sam.state_dict().items(), b.sam.state_dict().values(), strict=True):
        assert torch.equal(x, y), k


def test_empty_decode(model_256: MobileSam) -> None:
    emb = model_256.encode([sample_rgb(50, 80)])[0]
    out = model_256.decode(emb, [])
    assert out.masks.shape == (0, 50, 80) and len(out) == 0


def test_decoding_many_frames_in_one_call_equals_decoding_each(model_256: MobileSam) -> None:
    # The path a GPU takes (every frame's prompts through one mask-decoder call), checked here on
    # the CPU against decoding frame by frame; frames of other sizes, prompts of every shape.
    sizes = [(240, 320), (360, 640), (200, 200)]
    embeddings = model_256.encode([sample_rgb(h, w, seed=i) for i, (h, w) in enumerate(sizes)])
    low = model_256.low_res_size
    logits = np.random.default_rng(0).normal(0, 4, (low, low)).astype(np.float32)
    items = [
        (embeddings[0], [DecodeRequest(PROMPTS[0]), DecodeRequest(PROMPTS[1])]),
        (embeddings[1], [DecodeRequest(PROMPTS[1], logits, multimask=True), DecodeRequest(PROMPTS[2])]),
        (embeddings[2], []),
        (embeddings[2], [DecodeRequest(PROMPTS[3]), DecodeRequest(PROMPTS[0])]),
    ]
    together = model_256.decode_many(items, across_frames=True)
    for (embedding, requests), got in zip(items, together, strict=True):
        want = model_256.decode(embedding, requests)
        assert got.masks.shape == want.masks.shape
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-3)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
        for a, b in zip(got.masks, want.masks, strict=True):
            union = np.logical_or(a, b).sum()
            assert union == 0 or np.logical_and(a, b).sum() / union >= 0.99
