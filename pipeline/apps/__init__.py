"""The applications, each importing Ray only when it starts: ``samstream run``
(:mod:`~pipeline.apps.run`: one job end to end, on local Ray and an embedded Redis by default),
``samstream serve`` (:mod:`~pipeline.apps.serve`: the service's start-up; the driver it starts is
:mod:`workers.service`) and ``samstream view`` (:mod:`~pipeline.apps.view`: the viewer of a run's
job, also served by ``run --view``)."""
