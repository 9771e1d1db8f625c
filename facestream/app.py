"""Assembles a pipeline from settings and runs it: the one place that knows every stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facestream.pipeline.config import to_dict
from facestream.pipeline.device import cpu_threads, resolve_device
from facestream.pipeline.errors import ConfigError, PipelineError, OutputError
from facestream.pipeline.progress import ProgressPrinter
from facestream.pipeline.runner import Pipeline, Progress, RunReport, run_coroutine
from facestream.pipeline.mux import Muxer
from facestream.pipeline.router import Router
from facestream.pipeline.tee import Tee
from facestream.facelib.media.demux import SidePacket
from facestream.pipeline.stage import Sink, Stage
from facestream.stages.decoder import Decoder
from facestream.stages.encoder import CONTAINERS, Encoder
from facestream.facelib.media.inputs import IMAGE_EXTENSIONS, redact_url, resolve_input
from facestream.stages.passthrough import PassThrough
from facestream.stages.streamer import is_stream_url, live_output

from . import __version__
from .settings import Settings

log = logging.getLogger(__name__)


def analysis_stages(
    settings: Settings,
    *,
    landmarks: bool,
    identity: str | None,
    references: dict[str, list[str]] | None = None,
    mapping: dict[str, str] | None = None,
) -> list[Stage]:
    """Detector, tracker, the landmarker and embedder where they are wanted, and the selector.

    ``identity`` is what the face selection gives the faces it picks; ``references`` (person ->
    images) and ``mapping`` (person -> identity) serve selection by reference and ``map``.
    """
    # The face stages and their libraries load only for the modes that use them (start-up).
    from facestream.stages.detector import Detector
    from facestream.stages.embedder import Embedder
    from facestream.stages.landmarker import Landmarker
    from facestream.stages.selector import Selector
    from facestream.stages.tracker import Tracker

    d, flow, sel, ids, tr = settings.detector, settings.flow, settings.select, settings.identity, settings.tracker
    models = settings.models
    batch = {"batch_size": flow.batch_size, "max_wait_ms": flow.max_wait_ms}
    stages: list[Stage] = [Detector(d, models=models, max_side=settings.memory.detect_max_side, **batch)]
    if not tr.on and (sel.mode != "all" or d.every > 1):
        raise ConfigError("face selection other than 'all', and detector.every > 1, need the tracker",
                          key="tracker.enabled")
    kind = settings.landmarker.model
    if kind == "auto":
        kind = "2d106" if landmarks else "none"
    refine = settings.landmarker.refine_predicted
    landmarker = None
    if (kind != "none" and models.pack == "insightface") or refine:
        if models.pack == "builtin":
            kind = "68"
        elif kind == "none":
            kind = "2d106"
        smoothing = (tr.min_cutoff, tr.beta) if tr.on and tr.smooth else None
        landmarker = Landmarker(settings.landmarker, models=models, kind=kind, smoothing=smoothing, **batch)
    if tr.on:
        stages.append(Tracker(tr, every=d.every, smooth_landmarks=landmarker is None))
    if landmarker is not None:
        stages.append(landmarker)
    if references is None:
        references = {Path(p).stem: expand_images(p, "select.references") for p in sel.references}
    by_embedding = sel.mode in ("reference", "map")
    needs_embeddings = by_embedding or (sel.mode == "one" and ids.reid)
    want_embed = {"always": True, "never": False}.get(settings.embedder.enabled, needs_embeddings)
    if needs_embeddings and not want_embed:
        raise ConfigError(f"select.mode {sel.mode} needs embeddings", key="embedder.enabled")
    if want_embed:
        stages.append(Embedder(settings.embedder, models=models, tracked=tr.on, refresh_frames=ids.refresh_frames,
                               better_view=ids.better_view, **batch))
    stages.append(_configured("select", lambda: Selector(sel, ids, models=models, identity=identity,
                                                         references=references, mapping=mapping)))
    return stages


def _configured(section: str, factory: Callable[[], Stage]) -> Stage:
    """Build a stage whose arguments are resolved from several keys; a ValueError names the section."""
    try:
        return factory()
    except ValueError as exc:
        raise ConfigError(str(exc), key=section) from None


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


def swap_stages(settings: Settings, device: torch.device) -> tuple[list[Stage], str]:
    """Analysis, generator and blender for swapping; also names the model (for provenance)."""
    from facestream.stages.generator import Generator

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
    models = settings.models
    kind = sw.generator if sw.generator != "auto" else ("inswapper" if models.pack == "insightface" else "builtin")
    swap_models = dataclasses.replace(models, dtype=sw.dtype)
    model_name = swap_models.path("swapper").name if kind == "inswapper" else "builtin piecewise-affine swapper"
    b, flow = settings.blend, settings.flow
    batch = {"batch_size": flow.batch_size, "max_wait_ms": flow.max_wait_ms}
    stages = analysis_stages(settings, landmarks=b.mask == "hull" or b.keep_mouth, identity="source",
                             references=references, mapping=mapping)
    people = None
    if kind == "inswapper":
        # The sources are embedded now, before any other model loads: ArcFace is needed only for
        # this, and loading it beside the pipeline's models would set the run's peak memory.
        from facestream.facelib.models.people import embed_people

        people = embed_people(swap_models, device, sources)
    stages.append(Generator(kind=kind, models=swap_models, sources=sources, builtin_size=sw.builtin_size,
                            people=people, faces_per_forward=settings.memory.faces_per_forward, **batch))
    stages.append(blender_stage(settings))
    return stages, model_name


def blender_stage(settings: Settings) -> Stage:
    from facestream.stages.blender import Blender

    flow = settings.flow
    return Blender(settings.blend, watermark=settings.output.watermark, batch_size=flow.batch_size,
                   max_wait_ms=flow.max_wait_ms)


def anonymize_stages(settings: Settings) -> list[Stage]:
    from facestream.stages.generator import Generator

    a, flow = settings.anonymize, settings.flow
    stages = analysis_stages(settings, landmarks=False, identity="anonymize")
    stages.append(Generator(kind=a.style, strength=a.strength, batch_size=flow.batch_size,
                            max_wait_ms=flow.max_wait_ms))
    stages.append(blender_stage(settings))
    return stages


def build_stages(settings: Settings, *, source: str | Sequence[str], output: str | Sequence[str],
                 faces_jsonl: str | None = None, live: bool = False, device: torch.device | None = None,
                 write_from_s: float = 0.0, preview: Sink | None = None) -> list[Stage]:
    """Decoder, the mode's processing stages, encoder. The output is claimed first, so that a second
    run on it fails before any model loads. ``write_from_s``: see :class:`Encoder`. ``preview``: one
    more output beside the encoders (a :class:`~facestream.stages.preview.Preview`; with several
    feeds it gets the frames of all of them).

    Several sources are several feeds on one pipeline: each has its own decoder (under a
    :class:`Muxer`) and its own output (``output`` in the same order, under a :class:`Router`), and
    every model batches frames of all of them."""
    sources = _listed(source)
    feeds = len(sources) > 1
    if feeds:
        _check_pairs(sources, _listed(output))
        # Batches hold a frame of every feed (as DeepStream's muxer batches one per source): under
        # the latest flow a stage that falls behind then serves every feed, not the first few.
        flow = settings.flow
        settings = dataclasses.replace(settings, flow=dataclasses.replace(flow, batch_size=max(flow.batch_size,
                                                                                               len(sources))))
    i, o = settings.input, settings.output
    decoder_settings = dataclasses.replace(i, audio=i.audio and o.audio != "none")
    decoders = [Decoder(decoder_settings, source=s) for s in sources]
    first: Stage = decoders[0]
    if feeds:
        first = Muxer(decoders, policy=settings.flow.resolve(live=live), queue_size=2)
    encoder_settings = o.encoder()
    if live:
        # A live recording is written in place as fragments: playable up to the last one whatever
        # happens to the run (kill -9, a power cut). Matroska and WebM are playable as written.
        encoder_settings = dataclasses.replace(encoder_settings, fragmented=True)
    encoders: list[Encoder] = []
    try:
        for target in _listed(output):
            if is_stream_url(target):
                encoders.append(live_output(encoder_settings, target, backoff_s=i.backoff_s))
            else:
                encoders.append(Encoder(encoder_settings, path=target, in_place=live, write_from_s=write_from_s))
            encoders[-1].claim()
        middle, metadata = _middle_stages(settings, faces_jsonl=faces_jsonl, device=device)
    except BaseException:
        for encoder in encoders:
            encoder.release()
        raise
    for encoder in encoders:
        encoder.metadata = metadata
    if feeds:
        router = Router(encoders)
        if preview is None:
            return [first, *middle, router]
        # The preview beside the outputs: it sees every feed's frames and keeps each feed's newest.
        both = Tee([router, preview], copy_side=SidePacket.copy)
        both.batch_size = router.batch_size
        return [first, *middle, both]
    sinks: list[Sink] = [*encoders, *([preview] if preview is not None else [])]
    if len(sinks) == 1:
        return [first, *middle, sinks[0]]
    return [first, *middle, Tee(sinks, copy_side=SidePacket.copy)]


def _listed(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)



def _check_pairs(sources: Sequence[str], targets: Sequence[str]) -> None:
    """Several inputs: one output each, in order."""
    if len(targets) != len(sources):
        raise ConfigError(f"{len(sources)} inputs need {len(sources)} outputs (-o once per input, in the same "
                          f"order), got {len(targets)}")


def _middle_stages(settings: Settings, *, faces_jsonl: str | None,
                   device: torch.device | None) -> tuple[list[Stage], dict[str, str]]:
    """The mode's processing stages, and the metadata that marks its output."""
    o = settings.output
    middle: list[Stage]
    metadata: dict[str, str] = {}
    if settings.mode == "analyze":
        from facestream.stages.annotator import Annotator

        middle = analysis_stages(settings, landmarks=settings.annotate.landmarks,
                                 identity="selected" if settings.select.mode == "one" else None)
        middle.append(Annotator(settings.annotate))
    elif settings.mode == "swap":
        middle, model = swap_stages(settings, device if device is not None else resolve_device(settings.device))
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
        from facestream.stages.export import FacesJsonl

        middle.append(FacesJsonl(path=faces_jsonl, landmarks=settings.landmarker.model not in ("auto", "none")))
    return middle, metadata


def is_live_input(source: str | Sequence[str], settings: Settings) -> bool:
    if not isinstance(source, str):
        return any(is_live_input(s, settings) for s in source)
    if settings.input.live is not None:
        return settings.input.live
    if settings.input.realtime:
        return True
    try:
        return resolve_input(source).live
    except PipelineError:
        return False


def leaf_sinks(sink: Stage) -> list[Stage]:
    """The sinks a pipeline's last stage writes to, through :class:`Tee` and :class:`Router`."""
    if isinstance(sink, (Tee, Router)):
        return [leaf for s in sink.sinks for leaf in leaf_sinks(s)]
    return [sink]


@dataclass
class Job:
    """One assembled run: its pipeline, and where its report goes.

    ``await job.arun()`` inside a running event loop (a notebook, a web service), or ``job.run()``.
    Stopping is the caller's: ``job.pipeline.request_stop()``, ``job.pipeline.interrupt(signum)``.
    """

    pipeline: Pipeline
    settings: Settings
    source: str | Sequence[str]
    output: str | Sequence[str]
    stats_path: str | None = None

    async def arun(self) -> RunReport:
        """Run to the end (or an error, or a stop) and write the statistics (also when it fails)."""
        started = time.time()
        try:
            report = await self.pipeline.arun()
        finally:
            for encoder in leaf_sinks(self.pipeline.stages[-1]):
                if isinstance(encoder, Encoder):
                    encoder.release()  # also when a stage failed to start and the encoder never opened
        report.stats.update(
            {
                "facestream": __version__,
                "input": redact_url(self.source) if isinstance(self.source, str)
                else [redact_url(s) for s in self.source],
                "output": [redact_url(t) for t in _listed(self.output)] if not isinstance(self.output, str)
                else redact_url(self.output),
                "started_at": started,
                "settings": to_dict(self.settings),
            }
        )
        if self.stats_path:
            write_stats(self.stats_path, report.stats)
        return report

    def run(self) -> RunReport:
        """Run on a new event loop (uvloop where installed)."""
        return run_coroutine(self.arun())


def prepare_job(
    settings: Settings,
    *,
    source: str | Sequence[str],
    output: str | Sequence[str],
    stats_path: str | None = None,
    faces_jsonl: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    overwrite: bool = False,
    write_from_s: float = 0.0,
    preview: Sink | None = None,
) -> Job:
    """Check the paths, choose the device and flow policy, and assemble the stages into a :class:`Job`.

    ``source``: an input, or several: several feeds on one pipeline, each written to the output
    at its position in ``output``.

    ``output``: a file or stream URL, or several (with one source, each gets every frame).

    ``write_from_s``: process from the input's start but write only from this time (a segment
    warming up on the previous one's tail).

    ``preview``: a :class:`~facestream.stages.preview.Preview` sink fed beside the outputs (it keeps
    the newest frame of each feed for live viewers and never slows the run); serve it with
    :func:`facestream.preview.create_app`.

    Raises:
        PipelineError: a setting, the input or the output is wrong (one line for the user).
    """
    targets = _listed(output)
    if not targets:
        raise OutputError("no output given")
    sources = _listed(source)
    if len(sources) > 1:
        _check_pairs(sources, targets)
    files = [Path(t).resolve() for t in targets if not is_stream_url(t)]
    if len(set(files)) != len(files):
        raise OutputError("the same output file is given twice")
    for target in targets:
        if is_stream_url(target):
            continue
        if any("://" not in s and Path(s).exists() and Path(target).resolve() == Path(s).resolve() for s in sources):
            raise ConfigError(f"the output would overwrite the input: {target}")
        if Path(target).suffix.lower() not in CONTAINERS:
            raise OutputError(f"output must end in {', '.join(sorted(CONTAINERS))} (or be an rtmp://, rtsp://, "
                              f"srt://, udp:// or tcp:// URL, or v4l2:/dev/videoN): {target}")
        if Path(target).exists() and not overwrite:
            raise OutputError(f"{target} exists; add -y (--overwrite) to replace it")
    device = resolve_device(settings.device)
    threads = settings.threads or (cpu_threads() if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    live = is_live_input(source, settings)
    if settings.flow.policy == "latest" and not live:
        # Dropping frames only makes sense against a clock: a file under a live preset is paced
        # as if it were arriving live, and what falls behind is dropped (and counted).
        log.warning("input: %s is not a live feed; the latest-frame flow paces it in real time", source)
        settings = dataclasses.replace(settings, input=dataclasses.replace(settings.input, realtime=True))
        live = True
    policy = settings.flow.resolve(live=live)
    stages = build_stages(settings, source=source, output=output, faces_jsonl=faces_jsonl, live=live, device=device,
                          write_from_s=write_from_s, preview=preview)
    pipeline = Pipeline(
        stages,
        device=device,
        policy=policy,
        queue_size=settings.flow.queue_size,
        status_interval_s=settings.stats.interval_s,
        on_progress=progress if progress is not None else ProgressPrinter(settings.stats.progress),
        pinned_mb=settings.memory.pinned_mb,
        gpu_fraction=settings.memory.gpu_fraction,
    )
    return Job(pipeline, settings, source, output, stats_path)


def run_job(settings: Settings, *, source: str, output: str, **options: Any) -> RunReport:
    """Run one job to the end (see :func:`prepare_job` for the options) and report.

    Example:
        >>> report = run_job(load_settings(preset="anonymize"), source="in.mp4", output="out.mp4")  # doctest: +SKIP
    """
    return prepare_job(settings, source=source, output=output, **options).run()


async def arun_job(settings: Settings, *, source: str, output: str, **options: Any) -> RunReport:
    """:func:`run_job` inside a running event loop."""
    return await prepare_job(settings, source=source, output=output, **options).arun()


def write_stats(path: str, stats: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(stats, indent=2, default=str) + "\n")
    except OSError as exc:
        log.warning("cannot write statistics to %s: %s", path, exc.strerror)
