"""Errors the runtime reports to the user as one line."""

from __future__ import annotations


class PipelineError(Exception):
    """An error with a message fit to show the user as one line, without a traceback.

    ``exit_code`` is the process exit status the command line uses for it.
    """

    exit_code = 1


class ConfigError(PipelineError):
    """A preset, config file or ``--set`` override is wrong: names the file, key path and value."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        where = " ".join(part for part in (f"in {source}" if source else "", key and f"at {key}") if part)
        super().__init__(f"config error {where}: {message}" if where else f"config error: {message}")
        self.source = source
        self.key = key


class InputError(PipelineError):
    """The input cannot be opened or read (missing, corrupt, not a video, stream gone)."""


class OutputError(PipelineError):
    """The output cannot be created or written."""


class ModelError(PipelineError):
    """A model file is missing, of the wrong kind, or cannot be loaded."""


class StageError(PipelineError):
    """A stage raised while the graph was running."""

    def __init__(self, stage: str, frames: tuple[int, int] | None, cause: BaseException) -> None:
        if frames is None:
            where = f"stage '{stage}'"
        elif frames[0] == frames[1]:
            where = f"stage '{stage}' at frame {frames[0]}"
        else:
            where = f"stage '{stage}' at frames {frames[0]}-{frames[1]}"
        detail = str(cause) if isinstance(cause, PipelineError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"{where} failed: {detail}")
        self.stage = stage
        self.frames = frames
        self.cause = cause


class Cancelled(Exception):
    """Raised inside stage threads when the run is being torn down."""
