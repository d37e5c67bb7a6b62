"""Builds kornia's MobileSAM at any encoder input size.

kornia's ``Sam.from_config(SamConfig("mobile_sam"))`` fixes the input at 1024 px; the same
parts built here take ``image_size`` (a multiple of 16). The state dict is the official one at
every size: TinyViT's attention biases depend on the window sizes, not on the input size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kornia.models.sam import Sam

PATCH = 16  # pixels of input per image-embedding cell
PROMPT_DIM = 256


def build_mobile_sam(image_size: int = 1024) -> Sam:
    """A randomly initialised MobileSAM (TinyViT-5M encoder) taking ``image_size``² inputs, in eval mode."""
    from kornia.models.sam import Sam
    from kornia.models.sam.architecture.mask_decoder import MaskDecoder
    from kornia.models.sam.architecture.prompt_encoder import PromptEncoder
    from kornia.models.sam.architecture.transformer import TwoWayTransformer
    from kornia.models.tiny_vit import TinyViT

    if image_size % PATCH or image_size < 64:
        raise ValueError(f"image_size must be a multiple of {PATCH} and at least 64, got {image_size}")
    grid = image_size // PATCH
    model = Sam(
        image_encoder=TinyViT.from_config("5m", img_size=image_size, mobile_sam=True),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    return model.eval()
