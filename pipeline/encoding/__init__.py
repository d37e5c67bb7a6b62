"""The encoding stage's plain side: frames to embeddings, in batches, with the embeddings kept for
the frames still being tracked (:mod:`pipeline.encoding.stage`). The encoder pool's Ray shell is
:mod:`workers.pool`."""
