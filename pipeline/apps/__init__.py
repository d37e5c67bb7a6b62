"""The applications: ``samstream run`` (:mod:`~pipeline.apps.run`: one job end to end, on local
Ray and an embedded Redis by default). They import Ray only when they start. ``serve``'s driver is
still :mod:`workers.service`."""
