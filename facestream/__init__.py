"""facestream: detect, track, re-identify and swap, anonymise or annotate faces in video.

The Python API in three lines::

    import facestream
    report = facestream.run("talk.mp4", "blurred.mp4", facestream.load_settings(preset="anonymize"))
    print(report.status, report.stats["fps"])

``await facestream.arun(...)`` does the same inside a running event loop. The parts live in
``facestream.pipeline`` (the runtime), ``facestream.stages`` (one module per stage),
``facestream.facelib`` (the face library) and ``facestream.config`` (the presets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Settings", "__version__", "arun", "load_settings", "run"]

if TYPE_CHECKING:
    from facestream.pipeline.runner import RunReport
    from facestream.settings import Settings, load_settings


def run(source: str, output: str, settings: Settings | None = None, **options: Any) -> RunReport:
    """Process ``source`` into ``output`` with ``settings`` (default: the ``offline`` preset).

    Options: ``stats_path``, ``faces_jsonl``, ``progress`` (a callable receiving progress snapshots).
    Errors in the settings or paths raise :class:`facestream.pipeline.errors.PipelineError`; errors
    during the run are in the report (``report.error``), with the output finalised.
    """
    from facestream.app import run_job
    from facestream.settings import load_settings

    return run_job(settings or load_settings(), source=source, output=output, **options)


async def arun(source: str, output: str, settings: Settings | None = None, **options: Any) -> RunReport:
    """:func:`run` inside a running event loop (a notebook, a web service)."""
    from facestream.app import arun_job
    from facestream.settings import load_settings

    return await arun_job(settings or load_settings(), source=source, output=output, **options)


def __getattr__(name: str) -> Any:
    if name in ("Settings", "load_settings"):
        from facestream import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'facestream' has no attribute {name!r}")
