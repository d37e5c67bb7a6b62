"""The REST API of ``samstream serve`` (FastAPI): plain Python over Redis and a job backend.

:func:`create_app` builds the app; the Ray backend that runs the jobs is
:class:`workers.service.RayBackend`, chosen by the ``serve`` command. The client side (the
``--api`` options of the CLI) is :mod:`pipeline.api.client`.
"""

from pipeline.api.app import ApiSettings, Backend, create_app

__all__ = ["ApiSettings", "Backend", "create_app"]
