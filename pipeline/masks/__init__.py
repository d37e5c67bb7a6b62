"""Masks as data: COCO run-length encoding (:mod:`~pipeline.masks.rle`), a mask given as a prompt
(:mod:`~pipeline.masks.mask_prompt`) and mask images read and written (:mod:`~pipeline.masks.imageio`)."""
