"""The builtin pack: works right after ``pip install``, offline, on the CPU.

dlib's HOG detector (or its MMOD CNN detector), its 68-point shape predictor and its 128-d ResNet
face embedder, with the CC0 weights of the ``face-recognition-models`` package.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import dlib
import numpy as np
import torch

from .factory import BuiltinDetectorModel
from .insightface_pack import Detections
from .packs import dlib_model

# dlib's 68-point layout: right eye (image left) 36-41, left eye 42-47, nose tip 30, mouth corners 48, 54.
_EYE_A = slice(36, 42)
_EYE_B = slice(42, 48)


def kps_from_68(points: np.ndarray) -> np.ndarray:
    """``(..., 68, 2)`` landmarks -> ``(..., 5, 2)`` keypoints in insightface's order (eye centres as
    seen left to right, nose tip, mouth corners)."""
    return np.stack(
        (points[..., _EYE_A, :].mean(-2), points[..., _EYE_B, :].mean(-2), points[..., 30, :], points[..., 48, :],
         points[..., 54, :]),
        axis=-2,
    ).astype(np.float32)


def _host(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.cpu().numpy())


def _score(margin: float) -> float:
    """dlib's detector margin (about -0.5 .. 3) as a confidence in [0, 1]."""
    return float(1.0 / (1.0 + np.exp(-2.0 * (margin + 0.5))))


class DlibDetector:
    """HOG (fast) or MMOD CNN (more robust, slow on the CPU) detection, then the 68-point predictor,
    which gives both the dense landmarks and the five keypoints.

    HOG sometimes finds a face at the wrong scale: a head with its hair taken for a face twice its
    size, with landmarks that fit that box as well as a real face's fit its own. A weak HOG
    detection (score under ``VERIFY_BELOW``) is therefore looked at again, its region rescaled so the
    box is ``VERIFY_SIDE`` pixels: a face is found there again with a margin of at least 0, a
    wrong-scale box is not (``plausible`` says which; the tracker steadies it per track).

    HOG runs the frames of a batch side by side, a thread per core (dlib lets go of the GIL while it
    works; each thread has a detector of its own, since one dlib detector must not be called from two
    threads at once); the landmarks are then predicted one frame after another.
    """

    VERIFY_BELOW = 0.8
    VERIFY_SIDE = 160.0
    PARALLEL = True  # a batch's frames side by side (off: one after another, as before)

    def __init__(
        self,
        *,
        model: BuiltinDetectorModel = "hog",
        upsample: int = 0,
        score_threshold: float = 0.5,
        max_faces: int = 0,
        min_size: float = 0.0,
    ) -> None:
        self.model = model
        self.upsample = upsample
        self.score_threshold = score_threshold
        self.max_faces = max_faces
        self.min_size = min_size
        if model == "hog":
            self._local = threading.local()
            self._pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="dlib-hog")
        else:
            self._cnn = dlib.cnn_face_detection_model_v1(str(dlib_model("mmod")))
        self._shape = dlib.shape_predictor(str(dlib_model("landmarks_68")))

    @property
    def _hog(self) -> dlib.fhog_object_detector:
        """This thread's HOG detector."""
        hog = getattr(self._local, "hog", None)
        if hog is None:
            hog = self._local.hog = dlib.get_frontal_face_detector()
        return hog

    def detect(self, images: list[torch.Tensor]) -> list[Detections]:
        rgbs = [_host(image) for image in images]
        if self.model == "hog" and self.PARALLEL and len(rgbs) > 1:
            found = list(self._pool.map(self._find_checked, rgbs))
        else:
            found = [self._find_checked(rgb) for rgb in rgbs]
        out = []
        for rgb, (rects, scores, boxes, plausible) in zip(rgbs, found):
            lm = np.asarray(
                [[(p.x, p.y) for p in self._shape(rgb, r).parts()] for r in rects], np.float32
            ).reshape(-1, 68, 2)
            out.append(Detections(boxes, scores, kps_from_68(lm), lm, plausible))
        return out

    def _find_checked(self, rgb: np.ndarray) -> tuple[list, np.ndarray, np.ndarray, np.ndarray | None]:
        """One frame's faces, filtered and ordered: rects, scores, boxes, and (HOG) whether each is
        found again at a finer scale."""
        rects, scores = self._find(rgb)
        keep = [i for i, s in enumerate(scores) if s >= self.score_threshold]
        rects = [rects[i] for i in keep]
        scores = np.asarray([scores[i] for i in keep], np.float32)
        boxes = np.asarray([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects], np.float32).reshape(-1, 4)
        if self.min_size > 0 and len(boxes):
            big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_size
            rects = [r for r, b in zip(rects, big) if b]
            boxes, scores = boxes[big], scores[big]
        order = np.argsort(-scores, kind="stable")
        if self.max_faces:
            order = order[: self.max_faces]
        rects = [rects[i] for i in order]
        boxes, scores = boxes[order], scores[order]
        plausible = None
        if self.model == "hog":
            plausible = np.array([s >= self.VERIFY_BELOW or self._found_again(rgb, b) for b, s in zip(boxes, scores)],
                                 bool)
        return rects, scores, boxes, plausible

    def _found_again(self, rgb: np.ndarray, box: np.ndarray) -> bool:
        """Whether HOG finds a face covering most of ``box`` in its region rescaled to VERIFY_SIDE."""
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(x2 - x1, 1.0)
        m = 0.25 * side
        h, w = rgb.shape[:2]
        cx1, cy1, cx2, cy2 = int(max(0, x1 - m)), int(max(0, y1 - m)), int(min(w, x2 + m)), int(min(h, y2 + m))
        if cx2 - cx1 < 8 or cy2 - cy1 < 8:
            return False
        s = self.VERIFY_SIDE / side
        crop = cv2.resize(rgb[cy1:cy2, cx1:cx2], None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        rects, margins, _ = self._hog.run(crop, 0, -0.5)
        for r, margin in zip(rects, margins):
            ix = min(r.right() / s + cx1, x2) - max(r.left() / s + cx1, x1)
            iy = min(r.bottom() / s + cy1, y2) - max(r.top() / s + cy1, y1)
            if margin >= 0 and ix > 0 and iy > 0 and ix * iy > 0.5 * side * side:
                return True
        return False

    def _find(self, rgb: np.ndarray) -> tuple[list, list[float]]:
        if self.model == "hog":
            rects, margins, _ = self._hog.run(rgb, self.upsample, -0.5)
            return list(rects), [_score(m) for m in margins]
        found = self._cnn(rgb, self.upsample)
        return [d.rect for d in found], [_score(d.confidence) for d in found]


class DlibLandmarks:
    """The 68-point predictor on given boxes."""

    count = 68

    def __init__(self) -> None:
        self._shape = dlib.shape_predictor(str(dlib_model("landmarks_68")))

    def predict(self, frames: list[torch.Tensor], frame_of: list[int], boxes: np.ndarray) -> np.ndarray:
        hosts = {f: _host(frames[f]) for f in set(frame_of)}
        pts = []
        for f, b in zip(frame_of, boxes):
            rect = dlib.rectangle(int(round(b[0])), int(round(b[1])), int(round(b[2])) - 1, int(round(b[3])) - 1)
            pts.append([(p.x, p.y) for p in self._shape(hosts[f], rect).parts()])
        return np.asarray(pts, np.float32).reshape(-1, 68, 2)


class DlibRecognizer:
    """dlib's ResNet embedder: a 150x150 chip aligned by the 68 landmarks, 128-d, L2-normalised here
    (dlib's own distance threshold of 0.6 is a cosine similarity of about 0.82)."""

    dim = 128

    def __init__(self) -> None:
        self._net = dlib.face_recognition_model_v1(str(dlib_model("recognizer")))
        self._landmarks: DlibLandmarks | None = None

    def embed(self, frames: list[torch.Tensor], frame_of: list[int], faces: list) -> np.ndarray:
        """``(B, 128)`` unit vectors; faces without 68 landmarks get them from the shape predictor."""
        if not len(frame_of):
            return np.zeros((0, self.dim), np.float32)
        landmarks = np.zeros((len(faces), 68, 2), np.float32)
        missing = [i for i, f in enumerate(faces) if f.landmarks is None or len(f.landmarks) != 68]
        for i, f in enumerate(faces):
            if i not in missing:
                landmarks[i] = f.landmarks
        if missing:
            if self._landmarks is None:
                self._landmarks = DlibLandmarks()
            landmarks[missing] = self._landmarks.predict(
                frames, [frame_of[i] for i in missing], np.stack([faces[i].box for i in missing])
            )
        order = sorted(set(frame_of))
        images = [_host(frames[f]) for f in order]
        shapes = []
        for f in order:
            objs = dlib.full_object_detections()
            for face, g in enumerate(frame_of):
                if g == f:
                    objs.append(_object(landmarks[face]))
            shapes.append(objs)
        vectors = self._net.compute_face_descriptor(images, shapes)
        by_frame = {f: list(v) for f, v in zip(order, vectors)}
        out = np.zeros((len(frame_of), self.dim), np.float32)
        taken = {f: 0 for f in order}
        for face, f in enumerate(frame_of):
            out[face] = np.asarray(by_frame[f][taken[f]], np.float32)
            taken[f] += 1
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _object(points: np.ndarray) -> dlib.full_object_detection:
    xs, ys = points[:, 0], points[:, 1]
    rect = dlib.rectangle(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in points])
