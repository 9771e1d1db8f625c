"""The GPU device check and bench.gpu, run end to end on whatever this machine is (tiny sizes on the
CPU), and the preparation of the wheels the device machine is given."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import device_check

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()


def run_module(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_device_check_runs_every_step_and_writes_one_report(tmp_path):
    out = tmp_path / "report.json"
    proc = run_module("bench.device_check", "--out", str(out), "--tiny", timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == list(device_check.STEPS)
    for name, step in steps.items():
        assert step["status"] in ("ok", "skipped"), (name, step)
        if step["status"] == "skipped":
            assert step["why"], name
    env = steps["environment"]["result"]
    assert env["torch"] == torch.__version__ and env["cuda_available"] == CUDA
    assert env["pyav"]["codecs"]["libx264"] is True

    tests = steps["needs_cuda_tests"]["result"]
    assert "tests/facelib/models/test_device_path.py" in tests["files"]
    assert tests["tests"] and all(t["test"] for t in tests["tests"])
    if not CUDA:  # every needs_cuda test skips here, and the report says so
        assert steps["needs_cuda_tests"]["status"] == "skipped"
        assert "no CUDA GPU" in steps["needs_cuda_tests"]["why"]
        assert {t["outcome"] for t in tests["tests"]} == {"skipped"}

    nvdec = steps["nvdec"]["result"]
    for codec in ("h264", "hevc"):
        probe = nvdec[codec]
        assert probe["frames_software"] == probe["frames_hwaccel"] == nvdec["frames"]
        assert probe["matches_software"] is True
        if not CUDA:  # asked for NVDEC on a CPU run: the decoder fell back, said why, decoded the same frames
            assert probe["served_by"] == "software" and probe["fell_back"] is True
            assert any("needs a CUDA run" in m for m in probe["fallback_reason"])
            assert probe["max_abs_diff"] == 0

    sync = steps["sync_audit"]["result"]
    one, eight = sync["steps"]["one_frame"], sync["steps"]["eight_frames"]
    assert (one["frames"], eight["frames"]) == (1, 8) and eight["faces"] == 8 * one["faces"]
    assert sync["steps"]["constant_per_batch"] is True
    assert one["per_step"]["swap"] == one["per_step"]["paste"] == 0
    if not CUDA:
        assert sync["pipeline"]["status"] == "skipped" and "needs CUDA" in sync["pipeline"]["why"]

    bench = steps["bench_gpu"]["result"]
    assert bench["ratio"] == pytest.approx(bench["facestream"]["fps"] / bench["loop"]["fps"], rel=0.01)
    assert bench["encode_only"]["fps"] > 0

    assert report["summary"][0].startswith("device check")
    assert all(any(line.strip().startswith(name) for line in report["summary"]) for name in device_check.STEPS)
    assert "bench_gpu" in proc.stdout and "device check" in proc.stdout


def test_bench_gpu_tiny_reports_the_ratio_stages_and_encode_ceiling(tmp_path):
    """The torch engine on both sides: the loop's insightface sessions run through the adapter that
    serves them on CUDA."""
    out = tmp_path / "gpu.json"
    proc = run_module("bench.gpu", "--tiny", "--frames", "30", "--loop-frames", "8", "--engine", "torch",
                      "--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    fs, loop = r["facestream"], r["loop"]
    assert (r["clip"]["width"], r["clip"]["height"], r["clip"]["fps"]) == (320, 180, 30)
    assert fs["frames"] == 30 and loop["frames"] == 8 and loop["engine"] == "torch"
    assert fs["faces_swapped"] > 0 and loop["faces_swapped"] > 0
    assert r["ratio"] == pytest.approx(fs["fps"] / loop["fps"], rel=0.01)
    assert {"decoder", "detector", "generator", "blender", "encoder"} <= set(fs["stages"])
    assert fs["bound"] in fs["stages"]
    assert all(s["capacity_fps"] > 0 for n, s in fs["stages"].items() if n != "selector")
    assert fs["gpu_busy_share"] is None  # no GPU: no NVML figure, and it says so
    assert r["encode_only"]["frames"] == 30 and r["encode_only"]["codec"] == "libx264"
    assert r["encoder_bound"] == (fs["bound"] == "encoder")
    printed = proc.stdout
    assert re.search(r"facestream run \(swap preset\)\s+[\d.]+\s+\d+ of 30 frames\s+[\d.]+x", printed), printed
    assert "GPU busy share" in printed and "n/a" in printed
    assert "encode-only ceiling" in printed


def _registry_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=3):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _registry_reachable(), reason="the package registry is not reachable from here")
def test_prepare_resolves_every_carried_wheel_for_the_device_python(tmp_path):
    info = device_check.prepare(tmp_path / "wheels")
    names = {w.split("-")[0].lower(): w for w in info["wheels"]}
    assert set(names) == {"av", "insightface", "setuptools", "wheel", "packaging"}
    import av

    av_wheel = names["av"]
    assert av_wheel.startswith(f"av-{av.__version__}-") and av_wheel.endswith("x86_64.whl")
    python_tag, abi = av_wheel.split("-")[2:4]
    assert python_tag == "cp312" or (abi == "abi3" and int(python_tag[3:]) <= 12), av_wheel  # loads on CPython 3.12
    assert info["total_mb"] < device_check.CARRY_LIMIT_MB


@pytest.mark.slow
@pytest.mark.skipif(not list((ROOT / "bench" / ".wheels").glob("av-*.whl")),
                    reason="bench/.wheels not prepared (python -m bench.device_check --prepare)")
def test_launcher_installs_the_wheels_offline_and_runs_the_check(tmp_path):
    """The launcher into a virtualenv over this Python (as where the machine's site-packages is
    read-only): the carried wheels installed with --no-index, the project editable, the check run."""
    # No pip configuration of this machine (its local wheel folders and indexes): the carried wheels alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PYTHON": sys.executable, "DEVICE_CHECK_VENV": "1", "DEVICE_CHECK_VENV_DIR": str(tmp_path / "venv"),
                "PIP_CONFIG_FILE": os.devnull})
    proc = subprocess.run(["bash", "bench/device_check.sh", str(tmp_path / "out"), "--tiny", "--only", "environment"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "out" / "device-check.log").read_text()
    assert "installed: PyAV" in log and "== exit status 0" in log
    report = json.loads((tmp_path / "out" / "device-check.json").read_text())
    env_step = report["steps"]["environment"]
    assert env_step["status"] == "ok"
    assert env_step["result"]["executable"] == str(tmp_path / "venv" / "bin" / "python")
    assert env_step["result"]["insightface"] == "2.1"
