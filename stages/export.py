"""The faces export: one JSON line per frame, written in order as frames pass."""

from __future__ import annotations

import json
from typing import IO, Any

from facestream.pipeline.errors import OutputError
from facestream.pipeline.frame import Frame
from facestream.pipeline.stage import RunContext, Transform


def face_record(face: Any) -> dict[str, Any]:
    """A face as plain JSON data (coordinates rounded to 0.01 px)."""
    rec: dict[str, Any] = {
        "box": [round(float(v), 2) for v in face.box],
        "score": round(float(face.score), 4),
        "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in face.kps] if face.kps is not None else None,
        "track_id": face.track_id,
        "identity": face.identity,
    }
    if face.predicted:
        rec["predicted"] = True
    if not face.plausible:
        rec["doubted"] = True  # not taken for a face at its size: not swapped (anonymising hides it while seen)
    return rec


class FacesJsonl(Transform):
    """Writes ``{"frame": i, "pts": seconds, "faces": [...]}`` per frame to a JSON-lines file.

    When the run reads several feeds, each line also says which (``"stream"``) and the frame's
    position in that feed (``"stream_frame"``); ``pts`` is then the feed's own time.

    Args:
        path: The file to write (replaced).
        landmarks: Also write each face's dense landmarks.

    Example:
        >>> FacesJsonl(path="faces.jsonl", landmarks=True).report()
        {'path': 'faces.jsonl', 'lines': 0}
    """

    name = "faces_jsonl"

    def __init__(self, *, path: str, landmarks: bool = False) -> None:
        self.path = path
        self.landmarks = landmarks
        self._file: IO[str] | None = None
        self.lines = 0
        self.streams = False

    def open(self, ctx: RunContext) -> None:
        self.streams = len(ctx.streams) > 1
        try:
            self._file = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"cannot write faces export {self.path}: {exc.strerror}") from None

    def process(self, frames: list[Frame]) -> list[Frame]:
        assert self._file is not None
        for f in frames:
            faces = []
            for face in f.faces:
                rec = face_record(face)
                if self.landmarks and face.landmarks is not None:
                    rec["landmarks"] = [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks]
                faces.append(rec)
            record = {"frame": f.index, "pts": round(f.time, 6), "faces": faces}
            if self.streams:
                record = {"stream": f.stream, "stream_frame": f.stream_index, **record}
            self._file.write(json.dumps(record) + "\n")
        self.lines += len(frames)
        return frames

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def report(self) -> dict[str, Any]:
        return {"path": self.path, "lines": self.lines}
