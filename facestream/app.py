"""Assembles a pipeline from settings and runs it: the one place that knows every stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.config import to_dict
from pipeline.device import resolve_device
from pipeline.errors import ConfigError, FacestreamError, OutputError
from pipeline.progress import ProgressPrinter
from pipeline.runner import Pipeline, Progress, RunReport
from pipeline.stage import Stage
from stages.decoder import Decoder
from stages.encoder import CONTAINERS, Encoder
from stages.media.inputs import IMAGE_EXTENSIONS, resolve_input
from stages.passthrough import PassThrough

from . import __version__
from .settings import Settings

log = logging.getLogger("facestream")


def _configured(section: str, factory: Callable[[], Stage]) -> Stage:
    """Build a stage; a ValueError from its validation becomes a ConfigError naming the section."""
    try:
        return factory()
    except ValueError as exc:
        raise ConfigError(str(exc), key=section) from None


def model_config(settings: Settings):  # noqa: ANN201 - a ModelConfig
    from stages.models.factory import ModelConfig

    m = settings.models
    return _configured(
        "models",
        lambda: ModelConfig(
            pack=m.pack, name=m.name, dir=m.dir,
            files={"detector": m.detector, "landmarker": m.landmarker, "recognizer": m.recognizer, "swapper": m.swapper},
            engine=m.engine, dtype=m.dtype, providers=tuple(m.providers) if m.providers else None, threads=m.threads,
            spin=m.spin,
        ),
    )


def analysis_stages(
    settings: Settings,
    *,
    landmarks: bool,
    identity: str | None,
    references: dict[str, list[str]] | None = None,
    mapping: dict[str, str] | None = None,
) -> list[Stage]:
    """Detector, tracker, and the landmarker and embedder where they are wanted.

    ``identity`` is what the face selection gives the faces it picks; ``references`` (person ->
    images) and ``mapping`` (person -> identity) serve selection by reference and ``map``.
    """
    # The face stages and their libraries load only for the modes that use them (start-up).
    from stages.detector import Detector
    from stages.embedder import Embedder
    from stages.landmarker import Landmarker
    from stages.tracker import Tracker
    from stages.tracking.identity import IdentityCache
    from stages.tracking.selection import FaceSelector

    d, flow, sel, ids, tr = settings.detector, settings.flow, settings.select, settings.identity, settings.tracker
    models = model_config(settings)
    batch = {"batch_size": flow.batch_size, "max_wait_ms": flow.max_wait_ms}
    stages: list[Stage] = [
        _configured(
            "detector",
            lambda: Detector(
                models=models, input_size=d.input_size, score_threshold=d.score_threshold,
                nms_threshold=d.nms_threshold, max_faces=d.max_faces, min_size=d.min_size, every=d.every,
                builtin_model=d.builtin_model, upsample=d.upsample, **batch,
            ),
        )
    ]
    tracking = tr.enabled is True or tr.enabled == "auto"
    selector = _configured(
        "select",
        lambda: FaceSelector(mode=sel.mode, order=sel.order, min_size=sel.min_size, identity=identity),
    )
    cache = None
    tracker = None
    if tracking:
        cache = _configured(
            "identity",
            lambda: IdentityCache(refresh_frames=ids.refresh_frames, better_view=ids.better_view,
                                  switch_votes=ids.switch_votes, gallery_size=64 if ids.reid else 0),
        )
        tracker = _configured(
            "tracker",
            lambda: Tracker(track_thresh=tr.track_thresh, low_thresh=tr.low_thresh, new_track_thresh=tr.new_track_thresh,
                            match_thresh=tr.match_thresh, buffer_s=tr.buffer_s, min_hits=tr.min_hits,
                            coast_frames=tr.coast_frames, coast_behind=tr.coast_behind, smooth=tr.smooth, min_cutoff=tr.min_cutoff, beta=tr.beta,
                            selector=selector, cache=cache, every=d.every, reid_s=ids.reid_s,
                            rechoose_s=sel.rechoose_s),
        )
        stages.append(tracker)
    elif sel.mode != "all" or d.every > 1:
        raise ConfigError("face selection other than 'all', and detector.every > 1, need the tracker", key="tracker.enabled")
    kind = settings.landmarker.model
    if kind == "auto":
        kind = "2d106" if landmarks else "none"
    refine = settings.landmarker.refine_predicted
    if (kind != "none" and models.pack == "insightface") or refine:
        if models.pack == "builtin":
            kind = "68"
        elif kind == "none":
            kind = "2d106"
        stages.append(Landmarker(models=models, kind=kind, smoother=tracker.smooth_landmarks if tracker else None,
                                 refine_predicted=refine, **batch))
    needs_embeddings = selector.by_embedding or (sel.mode == "one" and ids.reid)
    want_embed = {"always": True, "never": False}.get(settings.embedder.enabled, needs_embeddings)
    if needs_embeddings and not want_embed:
        raise ConfigError(f"select.mode {sel.mode} needs embeddings", key="embedder.enabled")
    if want_embed:
        if references is None:
            references = {Path(p).stem: expand_images(p, "select.references") for p in sel.references}
        stages.append(_configured("select", lambda: Embedder(
            models=models, cache=cache, references=references if selector.by_embedding else None,
            mapping=mapping, identity=identity, threshold=ids.threshold, eligible=selector.big_enough,
            exclude=sel.exclude, **batch)))
    return stages


def expand_images(path: str, key: str) -> list[str]:
    """An image, or the images of a folder (name order)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(str(q) for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ConfigError(f"no images in folder {p}", key=key)
        return found
    if not p.is_file():
        raise ConfigError(f"image not found: {p}", key=key)
    return [str(p)]


def swap_stages(settings: Settings) -> tuple[list[Stage], str]:
    """Analysis, generator and blender for swapping; also names the model (for provenance)."""
    from stages.generator import Generator

    sw, sel = settings.swap, settings.select
    mapping = None
    references = None
    if sel.mode == "map":
        references, mapping, sources = {}, {}, {}
        for k, entry in enumerate(sw.map):
            target = [x for p in entry.target for x in expand_images(p, f"swap.map[{k}].target")]
            source = [x for p in entry.source for x in expand_images(p, f"swap.map[{k}].source")]
            if not target or not source:
                raise ConfigError("each map entry needs target and source images", key=f"swap.map[{k}]")
            name = f"{Path(target[0]).stem}->{Path(source[0]).stem}"
            references[name] = target
            mapping[name] = name
            sources[name] = source
    else:
        if not sw.source:
            raise ConfigError("swapping needs a source face: --source IMAGE (or swap.source in the preset)", key="swap.source")
        sources = {"source": [x for p in sw.source for x in expand_images(p, "swap.source")]}
    models = model_config(settings)
    kind = sw.generator if sw.generator != "auto" else ("inswapper" if models.pack == "insightface" else "builtin")
    swap_models = dataclasses.replace(models, dtype=sw.dtype)
    model_name = swap_models.path("swapper").name if kind == "inswapper" else "builtin piecewise-affine swapper"
    b, flow = settings.blend, settings.flow
    batch = {"batch_size": flow.batch_size, "max_wait_ms": flow.max_wait_ms}
    stages = analysis_stages(settings, landmarks=b.mask == "hull" or b.keep_mouth, identity="source",
                             references=references, mapping=mapping)
    stages.append(_configured("swap", lambda: Generator(kind=kind, models=swap_models, sources=sources,
                                                        builtin_size=sw.builtin_size, **batch)))
    stages.append(blender_stage(settings))
    return stages, model_name


def blender_stage(settings: Settings) -> Stage:
    from stages.blender import Blender

    b, flow = settings.blend, settings.flow
    return _configured("blend", lambda: Blender(
        mask=b.mask, padding=b.padding, feather=b.feather, keep_mouth=b.keep_mouth, colour=b.colour,
        poisson=b.poisson, watermark=settings.output.watermark, batch_size=flow.batch_size,
        max_wait_ms=flow.max_wait_ms))


def anonymize_stages(settings: Settings) -> list[Stage]:
    from stages.generator import Generator

    a, flow = settings.anonymize, settings.flow
    stages = analysis_stages(settings, landmarks=False, identity="anonymize")
    stages.append(_configured("anonymize", lambda: Generator(kind=a.style, strength=a.strength,
                                                             batch_size=flow.batch_size, max_wait_ms=flow.max_wait_ms)))
    stages.append(blender_stage(settings))
    return stages


def build_stages(settings: Settings, *, source: str, output: str, faces_jsonl: str | None = None) -> list[Stage]:
    """Decoder, the mode's processing stages, encoder."""
    i, o = settings.input, settings.output
    decoder = _configured(
        "input",
        lambda: Decoder(source=source, **{**dataclasses.asdict(i), "audio": i.audio and o.audio != "none"}),
    )
    middle: list[Stage]
    metadata: dict[str, str] = {}
    if settings.mode == "analyze":
        from stages.annotator import Annotator

        middle = analysis_stages(settings, landmarks=settings.annotate.landmarks,
                                 identity="selected" if settings.select.mode == "one" else None)
        middle.append(Annotator(landmarks=settings.annotate.landmarks, labels=settings.annotate.labels))
    elif settings.mode == "swap":
        middle, model = swap_stages(settings)
        if o.provenance:
            metadata = {
                "comment": f"Faces in this video were synthetically altered by facestream {__version__} ({model}).",
                "synthetic_media": f"facestream {__version__}; model {model}",
            }
    elif settings.mode == "anonymize":
        middle = anonymize_stages(settings)
        if o.provenance:
            metadata = {"comment": f"Faces in this video were anonymised by facestream {__version__}."}
    elif faces_jsonl:
        middle = analysis_stages(settings, landmarks=False, identity=None)
    else:
        middle = [PassThrough(batch_size=1)]
    if faces_jsonl:
        from stages.export import FacesJsonl

        middle.append(FacesJsonl(path=faces_jsonl, landmarks=settings.landmarker.model not in ("auto", "none")))
    encoder_settings = {k: v for k, v in dataclasses.asdict(o).items() if k not in ("watermark", "provenance")}
    encoder = _configured("output", lambda: Encoder(path=output, metadata=metadata, **encoder_settings))
    return [decoder, *middle, encoder]


def is_live_input(source: str, settings: Settings) -> bool:
    if settings.input.live is not None:
        return settings.input.live
    if settings.input.realtime:
        return True
    try:
        return resolve_input(source).live
    except FacestreamError:
        return False


def run_job(
    settings: Settings,
    *,
    source: str,
    output: str,
    stats_path: str | None = None,
    faces_jsonl: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunReport:
    """Run one job and write its statistics (also when it fails)."""
    if "://" not in source and Path(source).exists() and Path(output).resolve() == Path(source).resolve():
        raise ConfigError(f"the output would overwrite the input: {output}")
    if Path(output).suffix.lower() not in CONTAINERS:
        raise OutputError(f"output must end in {', '.join(sorted(CONTAINERS))}: {output}")
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    live = is_live_input(source, settings)
    policy = settings.flow.policy if settings.flow.policy != "auto" else ("latest" if live else "block")
    stages = build_stages(settings, source=source, output=output, faces_jsonl=faces_jsonl)
    if progress is None:
        progress = ProgressPrinter(settings.stats.progress)
    pipeline = Pipeline(
        stages,
        device=device,
        policy=policy,
        queue_size=settings.flow.queue_size,
        status_interval_s=settings.stats.interval_s,
        on_progress=progress,
    )
    started = time.time()
    report = pipeline.run()
    report.stats.update(
        {
            "facestream": __version__,
            "input": source,
            "output": output,
            "started_at": started,
            "settings": to_dict(settings),
        }
    )
    if stats_path:
        write_stats(stats_path, report.stats)
    return report


def write_stats(path: str, stats: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(stats, indent=2, default=str) + "\n")
    except OSError as exc:
        log.warning("cannot write statistics to %s: %s", path, exc.strerror)
