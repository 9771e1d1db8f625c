"""Run statistics in constant memory: per-stage throughput, latency percentiles, queues, GPU."""

from __future__ import annotations

import math
import resource
import threading
from dataclasses import dataclass, field
from typing import Any


class LatencyHistogram:
    """Log-bucketed histogram of durations: constant memory, percentiles within 1 %.

    Example:
        >>> h = LatencyHistogram()
        >>> for ms in range(1, 101): h.add(ms / 1000)
        >>> round(h.percentile(50) * 1000)
        50
    """

    _GROWTH = 1.01
    _MIN_S = 1e-6

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.max = 0.0
        self.total = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        key = self._key(seconds)
        with self._lock:
            self._buckets[key] = self._buckets.get(key, 0) + 1
            self.count += 1
            self.total += seconds
            if seconds > self.max:
                self.max = seconds

    def _key(self, seconds: float) -> int:
        return int(math.log(max(seconds, self._MIN_S) / self._MIN_S, self._GROWTH))

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile in seconds (0 when empty)."""
        with self._lock:
            if not self.count:
                return 0.0
            rank = q / 100 * self.count
            seen = 0
            for key in sorted(self._buckets):
                seen += self._buckets[key]
                if seen >= rank:
                    # Middle of the bucket, never above the true maximum.
                    return min(self._MIN_S * self._GROWTH ** (key + 0.5), self.max)
            return self.max

    def summary_ms(self) -> dict[str, float]:
        return {
            "p50_ms": round(self.percentile(50) * 1e3, 3),
            "p95_ms": round(self.percentile(95) * 1e3, 3),
            "max_ms": round(self.max * 1e3, 3),
        }


@dataclass
class StageStats:
    """Counters one stage thread updates; read by the orchestrator."""

    name: str
    frames: int = 0
    calls: int = 0
    busy_s: float = 0.0
    mixed_batches: int = 0  # batches holding frames of more than one feed
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def record(self, n_frames: int, seconds: float) -> None:
        self.frames += n_frames
        self.calls += 1
        self.busy_s += seconds
        self.latency.add(seconds)

    def summary(self, wall_s: float) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "fps": round(self.frames / wall_s, 2) if wall_s > 0 else 0.0,
            "capacity_fps": round(self.frames / self.busy_s, 2) if self.busy_s > 0 else None,
            **self.latency.summary_ms(),
            "busy": round(min(self.busy_s / wall_s, 1.0), 3) if wall_s > 0 else 0.0,
            "mean_batch": round(self.frames / self.calls, 2) if self.calls else 0.0,
        }


@dataclass
class QueueStats:
    """Sampled depth of one channel."""

    name: str
    capacity: int
    samples: int = 0
    depth_sum: int = 0
    depth_max: int = 0

    def sample(self, depth: int) -> None:
        self.samples += 1
        self.depth_sum += depth
        self.depth_max = max(self.depth_max, depth)

    def summary(self, drops: int) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "depth_mean": round(self.depth_sum / self.samples, 2) if self.samples else 0.0,
            "depth_max": self.depth_max,
            "drops": drops,
        }


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return peak_rss_mb()


class GpuSampler:
    """GPU utilisation and memory through NVML; does nothing, quietly, where NVML is absent."""

    def __init__(self, device_index: int = 0) -> None:
        self._handle = None
        self._nvml: Any = None
        self.util_sum = 0.0
        self.samples = 0
        self.mem_max_mb = 0.0
        self.name: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no driver, no library, no device: report nothing
            self._handle = None

    def sample(self) -> None:
        if self._handle is None:
            return
        try:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except Exception:  # noqa: BLE001 - a transient NVML failure must not stop the run
            return
        self.util_sum += util.gpu
        self.samples += 1
        self.mem_max_mb = max(self.mem_max_mb, mem.used / 2**20)

    def summary(self) -> dict[str, Any] | None:
        if self._handle is None:
            return None
        return {
            "name": self.name,
            "util_mean": round(self.util_sum / self.samples, 1) if self.samples else None,
            "mem_max_mb": round(self.mem_max_mb, 1),
        }

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self._handle = None
