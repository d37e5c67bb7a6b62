"""MobileSAM model layer: weights, pre/post-processing, encode and decode.

Importing this package imports torch; the CLI imports it lazily.
"""

from pipeline.model.segmenter import MobileSam
from pipeline.model.types import DecodeRequest, Embedding, MaskBatch

__all__ = ["DecodeRequest", "Embedding", "MaskBatch", "MobileSam"]
