"""Running a batch's files and segments on a Ray cluster.

Each slot of the batch is a Ray actor that keeps its models loaded between the pieces of work it
is given (one actor per GPU, or per configured CPU share). The driver keeps the manifest, moves
finished outputs into place and joins segments, exactly as for a local batch; an actor only runs
pipelines. Paths are read and written as given where inputs and the output folder are on storage
every node sees (a shared or network file system); with ``copy_files`` the driver sends each input
through Ray's object store and writes the outputs it gets back, for nodes that share no storage.
An actor that dies mid-piece (its process
killed, its node lost) is replaced and the piece is run again elsewhere: its output only ever
reached a hidden name, so nothing is lost or doubled.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
from typing import Any

from facestream.pipeline.errors import ConfigError, PipelineError
from facestream.pipeline.runner import RunReport

from .settings import Settings

log = logging.getLogger(__name__)

RETRIES = 3  # a piece whose actor died is tried again this many times


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'facestream[ray]'") from None
    return ray


class RayPool:
    """Actors on a Ray cluster, one per slot; :meth:`run` runs a pipeline on a slot's actor.

    Args:
        slots: Actors to start (None: one per CPU share, or per GPU, the cluster has).
        address: The cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``); None starts a local one.
        cpus: CPUs each actor reserves.
        gpu: Give each actor one GPU.
        copy_files: Move inputs and outputs through the object store instead of shared paths.
    """

    def __init__(self, *, slots: int | None, address: str | None, cpus: float = 1.0, gpu: bool = False,
                 copy_files: bool = False) -> None:
        ray = import_ray()
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except Exception as exc:  # noqa: BLE001 - Ray raises several kinds for "cannot connect"
                raise ConfigError(f"cannot reach the Ray cluster at {address or 'a new local one'}: {exc}") from None
        resources = ray.cluster_resources()
        if slots is None:
            slots = int(resources.get("GPU", 0)) if gpu else int(resources.get("CPU", 1) // cpus)
        self.slots = max(1, slots)
        self._options = {"num_cpus": cpus, "num_gpus": 1 if gpu else 0}
        self._actor_class = ray.remote(PipelineActor)
        self._actors: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.copy_files = copy_files
        self._inputs: dict[str, Any] = {}  # source -> its bytes in the object store (copy_files)

    def _actor(self, slot: int) -> Any:
        with self._lock:
            if slot not in self._actors:
                self._actors[slot] = self._actor_class.options(**self._options).remote()
            return self._actors[slot]

    def run(self, slot: int, settings: Settings, source: str, output: str, write_from_s: float,
            stopping: threading.Event) -> RunReport | None:
        """Run one pipeline on the slot's actor; a dead actor is replaced and the piece rerun."""
        ray = self.ray
        for attempt in range(RETRIES + 1):
            actor = self._actor(slot)
            ref = actor.run.remote(settings, source, output, write_from_s, self._input(source))
            while True:
                done, _ = ray.wait([ref], timeout=0.5)
                if done:
                    break
                if stopping.is_set():
                    ray.cancel(ref, force=True)
                    self._forget(slot, actor)
                    return None
            try:
                status, error, stats, data = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as exc:
                self._forget(slot, actor)
                log.warning("ray: the worker running %s died (%s); running it again (%d of %d)",
                            os.path.basename(source), type(exc).__name__, attempt + 1, RETRIES)
                continue
            if data is not None:
                with open(output, "wb") as f:  # a hidden name: the batch moves it into place
                    f.write(data)
            return RunReport(status, PipelineError(error) if error else None, None, stats)
        return RunReport("error", PipelineError(f"the Ray worker died {RETRIES + 1} times running it"), None, {})

    def _input(self, source: str) -> Any:
        """The input's bytes in the object store (put once per file, for all its segments)."""
        if not self.copy_files:
            return None
        with self._lock:
            if source not in self._inputs:
                if len(self._inputs) >= 2 * self.slots:  # files are taken in turn: let the oldest go
                    self._inputs.pop(next(iter(self._inputs)))
                with open(source, "rb") as f:
                    self._inputs[source] = self.ray.put(f.read())
            return self._inputs[source]

    def _forget(self, slot: int, actor: Any) -> None:
        with self._lock:
            if self._actors.get(slot) is actor:
                del self._actors[slot]
        try:
            self.ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:
        with self._lock:
            actors, self._actors = list(self._actors.values()), {}
        for actor in actors:
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass


class PipelineActor:
    """Runs pipelines in a Ray worker process, sharing loaded models between them."""

    def __init__(self) -> None:
        from facestream.facelib.models.shared import sharing

        self._sharing = sharing()
        self._sharing.__enter__()  # for the actor's lifetime

    def run(self, settings: Settings, source: str, output: str, write_from_s: float,
            data: bytes | None = None) -> tuple[str, str | None, dict, bytes | None]:
        """Run a pipeline on ``source`` into ``output``; with ``data`` (the input's bytes), on local
        copies, returning the output's bytes."""
        if data is None:
            return (*self._run(settings, source, output, write_from_s), None)
        with tempfile.TemporaryDirectory(prefix="facestream-ray-") as tmp:
            local_in = os.path.join(tmp, "input" + os.path.splitext(source)[1])
            local_out = os.path.join(tmp, "output" + os.path.splitext(output)[1])
            with open(local_in, "wb") as f:
                f.write(data)
            status, error, stats = self._run(settings, local_in, local_out, write_from_s)
            out = None
            if os.path.exists(local_out):
                with open(local_out, "rb") as f:
                    out = f.read()
            return status, error, stats, out

    def _run(self, settings: Settings, source: str, output: str, write_from_s: float) -> tuple[str, str | None, dict]:
        from .app import prepare_job

        try:
            job = prepare_job(settings, source=source, output=output, overwrite=True, progress=lambda p: None,
                              write_from_s=write_from_s)
        except PipelineError as exc:
            return "error", str(exc), {}
        report = job.run()
        stats = dict(report.stats)
        import ray

        stats["worker"] = {"host": socket.gethostname(), "pid": os.getpid(),
                           "node": ray.get_runtime_context().get_node_id()}
        return report.status, str(report.error) if report.error else None, stats
