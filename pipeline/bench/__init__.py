"""``samstream bench``: speed measured, never assumed.

Every speed claim is a ratio against a baseline measured in the same run, on the same inputs:

* ``encoder``   frames/s of samstream's encoder vs the plain eager kornia encoder, and the achieved
                GFLOP/s as a fraction of this machine's sgemm GFLOP/s;
* ``decoder``   time per frame for K tracks vs K single-prompt calls of the plain kornia decoder;
* ``pipeline``  frames/s of ``samstream run`` on a generated 720p clip with 2 tracks vs the loop a
                user writes from kornia's documentation (decode, ``set_image``, ``predict`` per track);
* ``machinery`` frames/s through source → encoder → decoder → Redis with a null model vs raw
                PyAV decoding of the same file: the ceiling the pipeline puts on a GPU.
"""
