"""Embeddings of people from their photos: the references and sources a run compares faces with."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import numpy as np
import torch

from facestream.pipeline.errors import InputError

from ..face import Face
from ..media.stills import read_rgb
from .factory import DetectorBackend, ModelSettings, RecognizerBackend, make_detector, make_recognizer

# Cosine similarity from which two embeddings are taken for one person, per pack. dlib's 128-d
# vectors are tight (its own rule, euclidean distance 0.6, is about 0.92 after normalising);
# ArcFace's 512-d ones are spread out (same person typically above 0.4, others near 0).
SAME_PERSON = {"builtin": 0.94, "insightface": 0.4}


def embed_people(models: ModelSettings, device: torch.device, people: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """One unit embedding per person: the mean over the main face (large and confident) of each of
    their images. The detector and recogniser it loads are let go before it returns, and their
    memory handed back to the system (a recogniser costs several times its file's size to load).

    Raises:
        InputError: an image cannot be read or shows no face.
    """
    try:
        return _embed(make_detector(models, device, score_threshold=0.3), make_recognizer(models, device), people,
                      device)
    finally:
        _trim_heap()


def _trim_heap() -> None:
    """Give freed heap memory back to the system (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _embed(detector: DetectorBackend, recognizer: RecognizerBackend, people: dict[str, list[str]],
           device: torch.device) -> dict[str, np.ndarray]:
    out = {}
    for name, paths in people.items():
        vectors = []
        for path in paths:
            image = torch.from_numpy(read_rgb(Path(path))).to(device)
            det = detector.detect([image])[0]
            if not len(det.boxes):
                raise InputError(f"no face found in {path}")
            # The main face: large and confident (a badge or a poster can be as large as a face).
            area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
            i = int(np.argmax(area * det.scores**2))
            face = Face(box=det.boxes[i], score=float(det.scores[i]), kps=det.kps[i] if det.kps is not None else None,
                        landmarks=det.landmarks[i] if det.landmarks is not None else None)
            vectors.append(recognizer.embed([image], [0], [face])[0])
        mean = np.mean(vectors, axis=0)
        out[name] = (mean / np.linalg.norm(mean)).astype(np.float32)
    return out
