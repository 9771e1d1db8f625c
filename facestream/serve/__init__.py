"""``facestream serve``: an HTTP service (FastAPI, run by uvicorn) that runs file jobs and live
streams, with their record in SQLite, Prometheus metrics and an OpenAPI description.

Needs the ``serve`` extra: ``pip install 'facestream[serve]'``.
"""
