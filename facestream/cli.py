"""The ``facestream`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from facestream.pipeline.errors import ConfigError, PipelineError

from . import __version__

if TYPE_CHECKING:
    from facestream.pipeline.runner import RunReport

    from .app import Job
    from .settings import Settings

EPILOG_RUN = """\
examples:
  facestream run talk.mp4 -o talk_out.mp4
  facestream run rtsp://cam.local/stream -o cam.mp4 --preset live
  facestream run webcam:0 -o webcam.mp4 --preset live --set input.webcam_size=1280x720
  facestream run clip.mkv -o clip.webm --set input.start=10 --set input.end=25 --stats run.json
  facestream run webcam:0 -o rtmp://live.example/app/KEY --preset live --set mode=anonymize
  facestream run rtsp://cam.local/stream -o cam.mp4 -o rtmp://live.example/app/KEY --preset live
  facestream run webcam:0 -o webcam.mp4 --preset live --preview   # watch it at http://127.0.0.1:8765/
  facestream run rtsp://cam1/s rtsp://cam2/s -o cam1.mp4 -o cam2.mp4 --preset live --set mode=anonymize

Several inputs are several feeds on one pipeline: every model batches frames of all of them,
tracks and identities are kept per feed, a feed that drops or ends does not stop the others, and
each input is written to its own output (the -o options, in the same order).

Any preset key can be overridden with --set section.key=value (values are read as YAML).
"""

EPILOG_BATCH = """\
examples:
  facestream batch videos/ -o blurred/ --preset anonymize
  facestream batch 'talks/**/*.mp4' -o swapped/ --source me.jpg --name '{parent}_{stem}.mp4' -j 2
  facestream batch long.mkv -o out/ --preset anonymize --segments 4 -j 4
  facestream batch videos/ -o blurred/ --preset anonymize --retry-failed
  facestream batch /shared/videos -o /shared/out --preset anonymize --backend ray --address head:6379

The exit status is 0 when every file is done, 1 when any failed, 130 when interrupted.
"""


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facestream",
        description="Detect, track, re-identify and swap, anonymise or annotate faces in video files and live feeds.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"facestream {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more messages")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="process a video file, stream, webcam or images",
        description="Process INPUT into OUTPUT with a preset.",
        epilog=EPILOG_RUN,
        formatter_class=_Formatter,
    )
    run.add_argument("input", nargs="+", metavar="INPUT",
                     help="file, rtsp/rtmp/srt/udp/http URL, webcam:N, image, folder or pattern; several: several "
                          "feeds on one pipeline, one -o each")
    run.add_argument("-o", "--output", required=True, action="append", metavar="OUTPUT",
                     help="output file (.mp4, .mkv, .mov, .webm), stream (rtmp://, rtsp://, srt://, udp://, tcp://) "
                          "or virtual camera (v4l2:/dev/videoN); "
                          "repeat it to record and stream at once (one input), or once per input")
    _settings_arguments(run)
    run.add_argument("--stats", metavar="FILE.json", help="write the run's statistics as JSON")
    run.add_argument("--faces-jsonl", metavar="FILE.jsonl", help="write every frame's faces as JSON lines")
    run.add_argument("-y", "--overwrite", action="store_true", help="replace OUTPUT if it exists")
    run.add_argument("--preview", nargs="?", const="127.0.0.1:8765", default=None, metavar="HOST:PORT",
                     help="watch the processed video and the run's figures live in a browser at http://HOST:PORT/ "
                          "(default 127.0.0.1:8765; WebRTC, or MJPEG; pip install 'facestream[preview]')")
    run.set_defaults(func=cmd_run)

    batch = sub.add_parser(
        "batch",
        help="process many videos into a folder; resumable after a crash",
        description="Process every INPUT (files, folders of videos, globs) into OUTDIR with a preset.\n"
                    "A manifest in OUTDIR records each file: run the same command again after a crash or\n"
                    "Ctrl-C and finished files are not redone.",
        epilog=EPILOG_BATCH,
        formatter_class=_Formatter,
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of videos, globs ('**' recurses)")
    batch.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR", help="output folder (made if missing)")
    _settings_arguments(batch)
    batch.add_argument("--name", default="{stem}.mp4", metavar="PATTERN",
                       help="output file names: {stem}, {name}, {ext}, {parent} (default: %(default)s)")
    batch.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                       help="files (or segments) at once in this process, sharing the models (default: 1; "
                            "with --backend ray: Ray actors, default one per CPU share of the cluster)")
    batch.add_argument("--segments", type=int, default=1, metavar="N",
                       help="cut each video at keyframes into N segments processed in parallel and joined losslessly")
    batch.add_argument("--overlap", type=float, default=2.0, metavar="SECONDS",
                       help="warm-up of each segment on the previous one's tail (default: %(default)s)")
    batch.add_argument("--retry-failed", action="store_true", help="rerun only the files that failed before")
    batch.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local: this process; ray: actors on a Ray cluster (pip install 'facestream[ray]')")
    batch.add_argument("--address", metavar="HOST:PORT", help="ray: the cluster to join (default: start a local one)")
    batch.add_argument("--ray-cpus", type=float, default=1.0, metavar="N", help="ray: CPUs per actor (default: 1)")
    batch.add_argument("--ray-copy", action="store_true",
                       help="ray: send files through Ray's object store (nodes that share no storage)")
    batch.add_argument("-y", "--overwrite", action="store_true", help="replace outputs this batch did not write")
    batch.set_defaults(func=cmd_batch)

    presets = sub.add_parser("presets", help="list the shipped presets", description="List the shipped presets.")
    presets.set_defaults(func=cmd_presets)

    demo = sub.add_parser(
        "demo",
        help="run the bundled demo (a clip built from photos shipped in packages)",
        description="Build the demo clip from photos that ship in installed packages and run the demo preset on it.",
    )
    demo.add_argument("-o", "--output", default="facestream-demo.mp4", metavar="OUTPUT", help="default: %(default)s")
    demo.add_argument("--stats", default="facestream-demo.json", metavar="FILE.json", help="default: %(default)s")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one preset key")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    demo.set_defaults(func=cmd_demo)

    _serve_parser(sub)

    doctor = sub.add_parser(
        "doctor", help="report device, CUDA, NVML, codecs and encoders found", description="Report what this machine offers."
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--models-dir", metavar="DIR", help="also look for model files here")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    """The options that make a run's settings (shared by run and batch)."""
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--preset", metavar="NAME", help="a shipped preset (see 'facestream presets'); default: offline")
    choice.add_argument("--config", metavar="FILE.yaml", help="a preset file of your own")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one preset key (repeatable)")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (same as --set device=DEV)")
    p.add_argument("--source", action="append", default=[], metavar="IMAGE",
                   help="swap: an image (or a folder) of the source face (repeatable: the faces are averaged)")
    p.add_argument("--map", action="append", default=[], metavar="TARGET=SOURCE",
                   help="swap: the person in TARGET (image or folder) gets the face in SOURCE (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")


def _settings(args: argparse.Namespace) -> Settings:
    from .settings import load_settings

    overrides = list(args.set)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.quiet:
        overrides.append("stats.progress=none")
    if args.source:
        overrides += ["mode=swap", f"swap.source={_yaml_list(args.source)}"]
    if args.map:
        entries = []
        for pair in args.map:
            target, sep, source = pair.partition("=")
            if not sep or not target or not source:
                raise ConfigError(f"--map takes TARGET=SOURCE, got {pair!r}")
            entries.append({"target": [target], "source": [source]})
        overrides += ["mode=swap", "select.mode=map", f"swap.map={json.dumps(entries)}"]
    return load_settings(preset=args.preset, config_file=args.config, overrides=overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from .app import prepare_job

    settings = _settings(args)
    # The preview's port is taken first: a port in use is one line before any model loads.
    preview_sock = _preview_socket(args.preview) if args.preview else None
    preview = None
    if preview_sock is not None:
        from facestream.stages.preview import Preview

        preview = Preview(feeds=len(args.input))
    try:
        source = args.input[0] if len(args.input) == 1 else args.input
        job = prepare_job(settings, source=source, output=args.output[0] if len(args.output) == 1 else args.output,
                          stats_path=args.stats,
                          faces_jsonl=args.faces_jsonl, overwrite=args.overwrite, preview=preview)
    except BaseException:
        if preview_sock is not None:
            preview_sock.close()
        raise
    server = _start_preview(job, preview, preview_sock) if preview is not None else None
    models = {getattr(s, "models", None) for s in job.pipeline.stages} - {None}
    if models and not args.quiet:
        packs = ", ".join(sorted({m.pack for m in models}))
        print(f"facestream: loading the models ({packs} pack) and opening the input", file=sys.stderr)
    try:
        report = run_interruptible(job)
    finally:
        if server is not None:
            server.stop()
    stats = report.stats
    if report.error is not None:
        print(f"facestream: error: {report.error}", file=sys.stderr)
    if stats.get("frames_out"):
        from facestream.stages.streamer import is_stream_url, redact

        dropped = f", {stats['frames_dropped']} dropped" if stats.get("frames_dropped") else ""
        sink = stats.get("stages", {}).get("outputs") or stats.get("stages", {}).get("streamer") or {}
        offline = sum(o.get("frames_dropped", 0) for o in sink.get("outputs", [sink]))
        dropped += f", {offline} dropped while a stream was down" if offline else ""
        targets = ", ".join(redact(o) for o in args.output)
        verb = "streamed to" if all(is_stream_url(o) for o in args.output) else "wrote"
        print(
            f"facestream: {verb} {targets}: {stats['frames_out']} frames in {stats['wall_s']:.1f} s "
            f"({stats['fps']:.1f} fps{dropped})",
            file=sys.stderr,
        )
    for feed, target in zip(stats.get("streams", []), args.output):
        from facestream.stages.streamer import redact

        dropped = f", {feed['frames_dropped']} dropped" if feed["frames_dropped"] else ""
        print(f"facestream: feed {feed['stream']} -> {redact(target)}: {feed['frames_out']} frames{dropped}, "
              f"latency p50 {feed['latency_ms']['p50_ms']:.0f} ms, p95 {feed['latency_ms']['p95_ms']:.0f} ms",
              file=sys.stderr)
    return report.exit_code


def _preview_socket(address: str) -> Any:
    """The preview's listening socket (``--preview``), or a one-line error."""
    try:
        from .preview import bind, parse_address
    except ImportError as exc:
        raise ConfigError(f"--preview needs the preview extra: pip install 'facestream[preview]' ({exc})") from None
    return bind(*parse_address(address))


def _start_preview(job: Job, preview: Any, sock: Any) -> Any:
    """Serve the preview of ``job`` on ``sock`` for the length of the run."""
    from facestream.facelib.media.inputs import redact_url

    from .preview import PreviewServer, create_app

    shown = redact_url(job.source) if isinstance(job.source, str) else ", ".join(redact_url(s) for s in job.source)
    app = create_app(preview, job.pipeline.snapshot, title=f"facestream: {shown}")
    server = PreviewServer(app, sock, preview)
    try:
        server.start()
    except BaseException:
        sock.close()
        raise
    print(f"facestream: preview at {server.url}", file=sys.stderr)
    return server


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch import Batch, BatchOptions, collect_inputs, render_table

    settings = _settings(args)
    options = BatchOptions(name=args.name, jobs=args.jobs, segments=args.segments, overlap_s=args.overlap,
                           retry_failed=args.retry_failed, overwrite=args.overwrite, backend=args.backend,
                           address=args.address, ray_cpus=args.ray_cpus, ray_copy=args.ray_copy)
    result = Batch(settings, collect_inputs(args.inputs), args.output_dir, options).run()
    print(render_table(result), file=sys.stderr)
    return result.exit_code


def run_interruptible(job: Job) -> RunReport:
    """Run a job on a new event loop with the command line's signal handling: the first SIGINT or
    SIGTERM drains the queued frames and finalises the output, a second one aborts."""
    from facestream.pipeline.runner import run_coroutine

    async def main() -> RunReport:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        for sig in signals:
            loop.add_signal_handler(sig, job.pipeline.interrupt, sig)
        try:
            return await job.arun()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return run_coroutine(main())


def _yaml_list(items: list[str]) -> str:
    return json.dumps(list(items))  # JSON is YAML


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(output=args.output, stats=args.stats, overrides=args.set, quiet=args.quiet)


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import list_presets

    presets = list_presets()
    width = max(len(n) for n in presets)
    for name, description in presets.items():
        print(f"{name.ljust(width)}  {description}")
    return 0


EPILOG_SERVE = """\
examples:
  facestream serve --input-dir videos/ --output-dir out/
  FACESTREAM_TOKEN=... facestream serve --host 0.0.0.0 --port 8000 --concurrency 2

The API is described at /docs and /openapi.json; metrics at /metrics (Prometheus).
Without a token the service binds only 127.0.0.1 (any other address needs --token).
"""


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="an HTTP service: file jobs, live streams, metrics (pip install 'facestream[serve]')",
        description="Serve an HTTP API that runs file jobs (queued beyond --concurrency) and live streams.\n"
                    "Jobs are recorded in STATE_DIR: after a restart finished results are kept and what was\n"
                    "running or queued is reported as interrupted.",
        epilog=EPILOG_SERVE,
        formatter_class=_Formatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s; any other "
                                                           "than loopback needs a token)")
    serve.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    serve.add_argument("--token", default=None, help="clients send 'Authorization: Bearer TOKEN' "
                                                     "(default: $FACESTREAM_TOKEN)")
    serve.add_argument("--input-dir", action="append", default=[], metavar="DIR",
                       help="folder requests may read videos and images from (repeatable; default: .)")
    serve.add_argument("--output-dir", default=".", metavar="DIR", help="folder jobs write into (default: .)")
    serve.add_argument("--state-dir", default=".facestream-serve", metavar="DIR",
                       help="where the record of jobs is kept (default: %(default)s)")
    serve.add_argument("--concurrency", type=int, default=1, metavar="N", help="jobs run at once; more wait in a "
                                                                               "queue (default: %(default)s)")
    serve.add_argument("--max-streams", type=int, default=4, metavar="N", help="live streams at once (default: %(default)s)")
    serve.add_argument("--max-body-mb", type=float, default=32.0, metavar="MB", help="largest request body "
                                                                                   "(default: %(default)s)")
    serve.add_argument("--max-image-mb", type=float, default=8.0, metavar="MB", help="largest uploaded source image "
                                                                                    "(default: %(default)s)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import ServeOptions, serve
    except ImportError as exc:
        raise PipelineError(f"facestream serve needs the serve extra: pip install 'facestream[serve]' ({exc})") from None
    options = ServeOptions(host=args.host, port=args.port, token=args.token or os.environ.get("FACESTREAM_TOKEN"),
                           input_dirs=args.input_dir or ["."], output_dir=args.output_dir, state_dir=args.state_dir,
                           concurrency=args.concurrency, max_streams=args.max_streams, max_body_mb=args.max_body_mb,
                           max_image_mb=args.max_image_mb)
    return serve(options)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import collect, render

    report = collect(args.models_dir)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_LowerLevelFormatter("facestream: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("libav").setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except PipelineError as exc:
        print(f"facestream: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``facestream presets | head``): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback on request
        if args.debug:
            raise
        print(f"facestream: error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1
