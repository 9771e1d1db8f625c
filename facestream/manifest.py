"""The batch manifest: what became of every file (and segment) of a batch, kept in the output folder.

One SQLite database per output folder. Every change of state is one committed transaction (with a
full sync), so a batch killed at any moment (``kill -9``, a power cut) finds on the next start
exactly which files were finished: those are never redone, and the others start again.

A file goes ``pending`` -> ``running`` -> ``done`` or ``failed``. A long video cut into segments
keeps one row per segment too, so that after a crash only the unfinished segments are redone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = ".facestream-batch.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    input TEXT PRIMARY KEY,
    output TEXT NOT NULL,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    frames INTEGER,
    wall_s REAL,
    output_mtime_ns INTEGER,
    output_size INTEGER,
    report TEXT
);
CREATE TABLE IF NOT EXISTS segments (
    input TEXT NOT NULL,
    idx INTEGER NOT NULL,
    plan TEXT NOT NULL,
    state TEXT NOT NULL,
    runs INTEGER NOT NULL DEFAULT 0,
    frames INTEGER,
    report TEXT,
    PRIMARY KEY (input, idx)
);
"""


@dataclass
class FileRow:
    """One input file's record."""

    input: str
    output: str
    state: str
    settings: str
    reason: str | None
    attempts: int
    runs: int
    started: float | None
    finished: float | None
    frames: int | None
    wall_s: float | None
    output_mtime_ns: int | None
    output_size: int | None


class Manifest:
    """The batch's record in ``folder``.

    Example:
        >>> import tempfile
        >>> m = Manifest(tempfile.mkdtemp())
        >>> m.add("in.mp4", "out.mp4", settings="s1")
        >>> m.get("in.mp4").state
        'pending'
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / MANIFEST_NAME
        # Autocommit mode: every statement is its own transaction unless ``_tx`` groups them.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ files

    def add(self, input: str, output: str, *, settings: str) -> None:
        """Record a file as pending (a file already recorded keeps its record)."""
        self._db.execute("INSERT OR IGNORE INTO files (input, output, state, settings) VALUES (?, ?, 'pending', ?)",
                         (input, output, settings))

    def get(self, input: str) -> FileRow | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM files WHERE input = ?", (input,)).fetchone()
        return FileRow(*row) if row else None

    def reset(self, input: str, *, output: str, settings: str) -> None:
        """Make a file pending again (settings changed, a retry, or a run that a crash cut short);
        its segments are forgotten when the settings changed."""
        with self._tx() as db:
            old = db.execute("SELECT settings FROM files WHERE input = ?", (input,)).fetchone()
            if old is not None and old[0] != settings:
                db.execute("DELETE FROM segments WHERE input = ?", (input,))
            db.execute("UPDATE files SET state='pending', output=?, settings=?, reason=NULL WHERE input=?",
                       (output, settings, input))

    def start(self, input: str) -> None:
        self._db.execute("UPDATE files SET state='running', started=?, runs=runs+1, attempts=attempts+1 "
                         "WHERE input=?", (time.time(), input))

    def finish(self, input: str, *, output: str, frames: int | None, wall_s: float | None,
               report: dict[str, Any] | None) -> None:
        """Record a file as done, with its output's size and modification time (a later start checks
        that the output is still the one this batch wrote)."""
        st = os.stat(output)
        self._db.execute(
            "UPDATE files SET state='done', reason=NULL, finished=?, frames=?, wall_s=?, output_mtime_ns=?, "
            "output_size=?, report=? WHERE input=?",
            (time.time(), frames, wall_s, st.st_mtime_ns, st.st_size,
             json.dumps(report, default=str) if report is not None else None, input))

    def fail(self, input: str, reason: str) -> None:
        self._db.execute("UPDATE files SET state='failed', reason=?, finished=? WHERE input=?",
                         (reason, time.time(), input))

    def plan_segments(self, input: str, plans: list[dict[str, Any]]) -> None:
        """Record a file's segments (once: a resumed batch keeps the plan it started with)."""
        with self._tx() as db:
            if db.execute("SELECT COUNT(*) FROM segments WHERE input = ?", (input,)).fetchone()[0]:
                return
            db.executemany("INSERT INTO segments (input, idx, plan, state) VALUES (?, ?, ?, 'pending')",
                           [(input, i, json.dumps(p)) for i, p in enumerate(plans)])

    def segments(self, input: str) -> list[tuple[int, dict[str, Any], str]]:
        """``(index, plan, state)`` of a file's segments, in order."""
        rows = self._db.execute("SELECT idx, plan, state FROM segments WHERE input = ? ORDER BY idx", (input,))
        return [(i, json.loads(p), s) for i, p, s in rows]

    def segment_state(self, input: str, idx: int, state: str, *, frames: int | None = None,
                      report: dict[str, Any] | None = None) -> None:
        runs = ", runs=runs+1" if state == "running" else ""
        self._db.execute(f"UPDATE segments SET state=?, frames=COALESCE(?, frames), report=COALESCE(?, report){runs} "
                         "WHERE input=? AND idx=?",
                         (state, frames, json.dumps(report, default=str) if report is not None else None, input, idx))

    def segment_reports(self, input: str) -> list[dict[str, Any] | None]:
        rows = self._db.execute("SELECT report FROM segments WHERE input = ? ORDER BY idx", (input,))
        return [json.loads(r) if r else None for (r,) in rows]


_COLUMNS = ", ".join(FileRow.__dataclass_fields__)
