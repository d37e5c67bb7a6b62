"""Jobs: one lifecycle, one resume rule, and the driver that moves many jobs' frames through the stages.

Plain Python: the driver reaches the stages through a :class:`~pipeline.jobs.transport.Transport`
(Ray actors in production, plain objects in an in-process transport for tests).
"""
