"""``facestream serve`` through real HTTP: the service runs in a subprocess on a free 127.0.0.1 port,
jobs run real pipelines on generated clips, outputs are read back with PyAV."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.conftest import ROOT, run_cli  # noqa: E402
from tests.media import make_clip  # noqa: E402
from tests.serve_helpers import ClipServer, ServeProcess, running_with_frames  # noqa: E402

SECRET = "s3cr3t-Pa55word"


def frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def png(size: int, noise: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (size, size, 3), np.uint8) if noise else np.full((size, size, 3), 128, np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("serve")
    f = {name: base / name for name in ("in", "out", "state", "outside")}
    for p in f.values():
        p.mkdir()
    make_clip(f["in"] / "short.mp4", seconds=1.2, size=(160, 120), faststart=True)
    make_clip(f["in"] / "long.mp4", seconds=12, size=(160, 120), faststart=True)
    make_clip(f["in"] / "long-b.mp4", seconds=12, size=(128, 96), faststart=True)  # another size: feed 1
    make_clip(f["outside"] / "private.mp4", seconds=0.5, size=(160, 120))
    (f["in"] / "escape.mp4").symlink_to(f["outside"] / "private.mp4")
    (f["out"] / "elsewhere").symlink_to(f["outside"])
    return f


@pytest.fixture(scope="module")
def svc(folders: dict[str, Path]) -> Iterator[ServeProcess]:
    s = ServeProcess(input_dir=folders["in"], output_dir=folders["out"], state_dir=folders["state"],
                     args=("--concurrency", "1", "--max-body-mb", "1", "--max-image-mb", "0.02"))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def clips(folders: dict[str, Path]) -> Iterator[ClipServer]:
    server = ClipServer(folders["in"], "viewer", SECRET)
    yield server
    server.close()


def test_job_runs_to_completion(svc: ServeProcess, folders: dict[str, Path]) -> None:
    job = svc.ok("POST", "/v1/jobs", {"input": "short.mp4", "output": "short-hidden.mp4", "preset": "anonymize",
                                      "overrides": {"anonymize.style": "pixelate"}}, expect=202)
    assert job["state"] == "queued" and job["outputs"] == ["short-hidden.mp4"]
    done = svc.wait("job", job["id"])
    assert done["state"] == "done", done
    out = folders["out"] / "short-hidden.mp4"
    n_in = frames(folders["in"] / "short.mp4")
    assert frames(out) == n_in == done["report"]["frames_out"]
    assert done["report"]["status"] == "ok" and done["report"]["settings"]["anonymize"]["style"] == "pixelate"
    assert done["progress"]["fraction"] == 1.0
    listed = svc.ok("GET", "/v1/jobs")["items"]
    assert [j["state"] for j in listed if j["id"] == job["id"]] == ["done"]
    assert job["id"] in [j["id"] for j in svc.ok("GET", "/v1/jobs?state=done")["items"]]
    assert job["id"] not in [j["id"] for j in svc.ok("GET", "/v1/jobs?state=failed")["items"]]


def test_cancel_mid_run_finalises_a_playable_output(svc: ServeProcess, folders: dict[str, Path]) -> None:
    # Paced in real time, the 12 s clip is still running when it is stopped.
    job = svc.ok("POST", "/v1/jobs", {"input": "long.mp4", "output": "long-cut.mkv",
                                      "overrides": {"input.realtime": True}})
    svc.wait("job", job["id"], until=lambda r: running_with_frames(r) and r["report"]["frames_out"] >= 10)
    stopping = svc.ok("DELETE", f"/v1/jobs/{job['id']}", expect=202)
    assert stopping["state"] in ("stopping", "cancelled")
    done = svc.wait("job", job["id"])
    assert done["state"] == "cancelled", done
    written = frames(folders["out"] / "long-cut.mkv")
    assert 10 <= written < frames(folders["in"] / "long.mp4")
    assert written == done["report"]["frames_out"]
    # Stopping it again is refused with the reason.
    status, answer = svc.call("DELETE", f"/v1/jobs/{job['id']}")
    assert status == 409 and answer["error"] == "already_finished"


def test_jobs_beyond_concurrency_wait_in_the_queue(svc: ServeProcess, folders: dict[str, Path]) -> None:
    paced = {"input.realtime": True, "input.end": 1.0}
    a = svc.ok("POST", "/v1/jobs", {"input": "long.mp4", "output": "q-a.mp4", "overrides": paced})
    b = svc.ok("POST", "/v1/jobs", {"input": "long.mp4", "output": "q-b.mp4", "overrides": paced})
    c = svc.ok("POST", "/v1/jobs", {"input": "long.mp4", "output": "q-c.mp4", "overrides": paced})
    svc.wait("job", a["id"], until=lambda r: r["state"] == "running")
    assert svc.ok("GET", f"/v1/jobs/{b['id']}")["state"] == "queued"
    assert svc.ok("GET", f"/v1/jobs/{c['id']}")["state"] == "queued"
    # A queued job cancelled never starts.
    assert svc.ok("DELETE", f"/v1/jobs/{c['id']}")["state"] == "cancelled"
    # The same output as a job not finished yet is refused.
    status, answer = svc.call("POST", "/v1/jobs", {"input": "short.mp4", "output": "q-b.mp4"})
    assert status == 409 and answer["error"] == "output_busy"
    a_done, b_done = svc.wait("job", a["id"]), svc.wait("job", b["id"])
    assert a_done["state"] == b_done["state"] == "done"
    assert b_done["started_at"] >= a_done["finished_at"] - 0.05
    assert svc.ok("GET", f"/v1/jobs/{c['id']}")["started_at"] is None
    assert not (folders["out"] / "q-c.mp4").exists()
    assert frames(folders["out"] / "q-b.mp4") == 25


def test_swap_with_an_uploaded_source_and_image_limits(svc: ServeProcess, folders: dict[str, Path]) -> None:
    small = base64.b64encode(png(32)).decode()
    big = base64.b64encode(png(200, noise=True)).decode()  # about 120 KB, over --max-image-mb 0.02
    status, answer = svc.call("POST", "/v1/jobs", {"input": "short.mp4", "output": "sw.mp4", "preset": "swap",
                                                   "sources": [{"data": big, "name": "me.png"}]})
    assert status == 413 and answer["error"] == "image_too_large", answer
    status, answer = svc.call("POST", "/v1/jobs", {"input": "short.mp4", "output": "sw.mp4", "preset": "swap",
                                                   "sources": [{"data": base64.b64encode(b"not an image").decode()}]})
    assert status == 422 and answer["error"] == "source_invalid", answer
    status, answer = svc.call("POST", "/v1/jobs", {"input": "short.mp4", "output": "sw.mp4", "preset": "swap"})
    assert status == 422 and answer["error"] == "source_required", answer
    # A swap whose source has no face fails with its one-line reason; the upload is accepted.
    job = svc.ok("POST", "/v1/jobs", {"input": "short.mp4", "output": "sw.mp4", "preset": "swap",
                                      "sources": [{"data": small, "name": "me.png"}]})
    done = svc.wait("job", job["id"])
    assert done["state"] == "failed" and "face" in done["error"] and "\n" not in done["error"], done
    assert not list((folders["state"] / "uploads").glob(f"{job['id']}/*"))  # uploads go with the job


def test_restart_keeps_results_and_marks_interrupted(folders: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    s = ServeProcess(input_dir=folders["in"], output_dir=folders["out"], state_dir=state)
    s.start()
    try:
        done = s.ok("POST", "/v1/jobs", {"input": "short.mp4", "output": "r-done.mp4", "overwrite": True})
        done = s.wait("job", done["id"])
        assert done["state"] == "done"
        running = s.ok("POST", "/v1/jobs", {"input": "long.mp4", "output": "r-running.mp4",
                                            "overrides": {"input.realtime": True}, "overwrite": True})
        queued = s.ok("POST", "/v1/jobs", {"input": "short.mp4", "output": "r-queued.mp4", "overwrite": True})
        s.wait("job", running["id"], until=running_with_frames)
        assert s.kill(signal.SIGKILL) == -signal.SIGKILL
        s.start()
        after = {j["id"]: j for j in s.ok("GET", "/v1/jobs")["items"]}
        assert after[done["id"]]["state"] == "done"
        kept = s.ok("GET", f"/v1/jobs/{done['id']}")
        assert kept["report"]["frames_out"] == done["report"]["frames_out"] == frames(folders["out"] / "r-done.mp4")
        for run in (running, queued):
            assert after[run["id"]]["state"] == "interrupted", after[run["id"]]
            assert "stopped while" in after[run["id"]]["error"]
        # A graceful stop (SIGTERM) finalises what runs, and the next start reports it interrupted.
        graceful = s.ok("POST", "/v1/jobs", {"input": "long.mp4", "output": "r-graceful.mp4",
                                             "overrides": {"input.realtime": True}, "overwrite": True})
        s.wait("job", graceful["id"], until=running_with_frames)
        assert s.stop() in (0, -signal.SIGTERM)  # uvicorn passes the signal on once it has stopped
        written = frames(folders["out"] / "r-graceful.mp4")
        assert 0 < written < frames(folders["in"] / "long.mp4")
        s.start()
        again = s.ok("GET", f"/v1/jobs/{graceful['id']}")
        assert again["state"] == "interrupted" and again["report"]["frames_out"] == written
        with sqlite3.connect(state / "serve.sqlite") as db:
            states = dict(db.execute("SELECT id, state FROM runs"))
        assert states[done["id"]] == "done" and states[graceful["id"]] == "interrupted"
    finally:
        s.kill()


def test_stream_live_figures_and_stop(svc: ServeProcess, folders: dict[str, Path]) -> None:
    from websockets.sync.client import connect

    # A file in the input folder, paced as a live feed by the live preset.
    stream = svc.ok("POST", "/v1/streams", {"input": "long.mp4", "outputs": ["rec.mp4"], "overwrite": True})
    assert stream["preset"] == "live" and stream["state"] == "starting"
    messages = []
    with connect(f"ws://127.0.0.1:{svc.port}/v1/streams/{stream['id']}/figures?interval=0.2", open_timeout=10) as ws:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv(timeout=10))
            messages.append(msg)
            if msg["report"] and msg["report"].get("frames_out", 0) >= 25:
                break
        live = messages[-1]
        assert live["state"] == "running" and live["report"]["status"] == "running", live
        assert {"frames_in", "frames_out", "fps", "stages", "queues"} <= set(live["report"])
        listed = svc.ok("GET", "/v1/streams")["items"]
        assert [s["state"] for s in listed if s["id"] == stream["id"]] == ["running"]
        metrics = _metrics(svc)
        depth = [s for s in metrics["facestream_queue_depth"].samples if s.labels["id"] == stream["id"]]
        assert depth and all(s.labels["kind"] == "stream" for s in depth)
        # Its browser preview (facestream.preview, mounted per stream): the page, its figures, a frame.
        page = live["links"]["preview"]
        assert page == f"/v1/streams/{stream['id']}/preview/"
        status, kind, body = svc.fetch(page)
        assert status == 200 and kind.startswith("text/html") and (b"<video" in body or b"<img" in body)
        status, _, body = svc.fetch(page + "figures.json")
        assert status == 200 and json.loads(body)["run"]["status"] == "running"
        status, kind, body = svc.fetch(page + "frame.jpg")
        assert status == 200 and kind == "image/jpeg"
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
        svc.ok("DELETE", f"/v1/streams/{stream['id']}", expect=202)
        while True:  # the socket sends until the stream ends, then closes
            try:
                messages.append(json.loads(ws.recv(timeout=30)))
            except Exception:  # noqa: BLE001 - closed by the service
                break
    assert messages[-1]["state"] == "stopped", messages[-1]
    written = frames(folders["out"] / "rec.mp4")
    assert 25 <= written == messages[-1]["report"]["frames_out"] < frames(folders["in"] / "long.mp4")
    status, _, body = svc.fetch(page)
    assert status == 404 and json.loads(body)["error"] == "no_preview"
    assert "preview" not in messages[-1]["links"]


def test_stream_of_two_inputs_runs_each_to_its_output_with_a_preview_per_feed(
        svc: ServeProcess, clips: ClipServer, folders: dict[str, Path]) -> None:
    # Two files of the input folder, paced live by the live preset: one pipeline, one output each.
    stream = svc.ok("POST", "/v1/streams", {"inputs": ["long.mp4", "long-b.mp4"],
                                            "outputs": ["two-a.mp4", "two-b.mkv"], "overwrite": True})
    assert stream["inputs"] == ["long.mp4", "long-b.mp4"] and stream["input"] == "long.mp4"
    assert stream["outputs"] == ["two-a.mp4", "two-b.mkv"]
    live = svc.wait("stream", stream["id"], until=lambda r: running_with_frames(r) and all(
        f["frames_out"] >= 10 for f in r["report"].get("streams", [{"frames_out": 0}] * 2)))
    assert [f["stream"] for f in live["report"]["streams"]] == [0, 1]
    listed = [s for s in svc.ok("GET", "/v1/streams")["items"] if s["id"] == stream["id"]]
    assert listed[0]["inputs"] == ["long.mp4", "long-b.mp4"]
    # The stream's preview covers both feeds: ?feed=1 is the second input (its own size).
    page = live["links"]["preview"]
    for feed, shape in ((0, (120, 160, 3)), (1, (96, 128, 3))):
        status, kind, body = svc.fetch(f"{page}frame.jpg?feed={feed}")
        assert status == 200 and kind == "image/jpeg", body
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == shape
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
    conn.request("GET", f"{page}stream.mjpg?feed=1")
    reply = conn.getresponse()
    assert reply.status == 200 and reply.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    head = reply.read(400)
    conn.close()
    assert b"X-Feed: 1" in head
    status, _, body = svc.fetch(f"{page}figures.json")
    figures = json.loads(body)
    assert figures["feeds"] == 2 and [f["feed"] for f in figures["preview"]["feeds"]] == [0, 1]
    status, _, body = svc.fetch(f"{page}frame.jpg?feed=2")
    assert status == 404 and b"no feed 2: this run has 2 feeds" in body
    svc.ok("DELETE", f"/v1/streams/{stream['id']}", expect=202)
    done = svc.wait("stream", stream["id"])
    assert done["state"] == "stopped", done
    assert done["inputs"] == ["long.mp4", "long-b.mp4"] and done["report"]["input"] == [
        str(folders["in"] / "long.mp4"), str(folders["in"] / "long-b.mp4")]
    # Both outputs finalised and playable, each with its own feed's frames (and size).
    for k, (name, size) in enumerate((("two-a.mp4", (160, 120)), ("two-b.mkv", (128, 96)))):
        written = frames(folders["out"] / name)
        assert 10 <= written == done["report"]["streams"][k]["frames_out"] < frames(folders["in"] / "long.mp4")
        with av.open(str(folders["out"] / name)) as c:
            assert (c.streams.video[0].width, c.streams.video[0].height) == size

    # A network input with credentials among several: the view and the record show it redacted.
    remote = clips.url("short.mp4", "viewer", SECRET)
    mixed = svc.ok("POST", "/v1/streams", {"inputs": ["short.mp4", remote], "outputs": ["mix-a.mp4", "mix-b.mp4"],
                                           "overwrite": True})
    assert mixed["inputs"] == ["short.mp4", clips.url("short.mp4").replace("http://", "http://***@")]
    mixed = svc.wait("stream", mixed["id"])
    assert mixed["state"] == "done", mixed
    assert [frames(folders["out"] / n) for n in ("mix-a.mp4", "mix-b.mp4")] == [frames(folders["in"] / "short.mp4")] * 2
    with sqlite3.connect(folders["state"] / "serve.sqlite") as db:
        record = db.execute("SELECT record FROM runs WHERE id = ?", (mixed["id"],)).fetchone()[0]
    assert json.loads(record)["inputs"] == mixed["inputs"] and SECRET not in record
    assert SECRET not in json.dumps(mixed) and SECRET not in svc.log.read_text()


@pytest.mark.parametrize("body, status, rule, says", [
    ({"inputs": ["short.mp4", "long.mp4"], "outputs": ["n-a.mp4"]}, 422, "outputs_per_input",
     "2 inputs need 2 outputs"),
    ({"inputs": ["short.mp4", "long.mp4", "short.mp4"], "outputs": ["n-a.mp4", "n-b.mp4"]}, 422,
     "outputs_per_input", "3 inputs need 3 outputs"),
    ({"inputs": ["short.mp4", "../outside/private.mp4"], "outputs": ["n-a.mp4", "n-b.mp4"]}, 400, "path_dotdot",
     "inputs[1]: "),
    ({"inputs": ["REMOTE", "escape.mp4"], "outputs": ["n-a.mp4", "n-b.mp4"]}, 403, "path_outside_folder",
     "inputs[1]: "),
    ({"inputs": ["short.mp4", "ftp://viewer:SECRET@host/clip.mp4"], "outputs": ["n-a.mp4", "n-b.mp4"]}, 400,
     "url_scheme", "inputs[1]: "),
    ({"inputs": ["short.mp4", "file:///etc/passwd"], "outputs": ["n-a.mp4", "n-b.mp4"]}, 400, "url_scheme",
     "inputs[1]: "),
    ({"inputs": ["short.mp4", "missing.mp4"], "outputs": ["n-a.mp4", "n-b.mp4"]}, 404, "not_found", "inputs[1]: "),
    ({"input": "short.mp4", "inputs": ["short.mp4"], "outputs": ["n-a.mp4"]}, 422, "input_or_inputs",
     "either 'input'"),
    ({"outputs": ["n-a.mp4"]}, 422, "input_or_inputs", "either 'input'"),
    ({"inputs": [], "outputs": ["n-a.mp4"]}, 422, "invalid_request", "inputs"),
    ({"inputs": ["short.mp4", 3], "outputs": ["n-a.mp4", "n-b.mp4"]}, 422, "invalid_request", "inputs.1"),
])
def test_streams_of_several_inputs_that_break_a_rule_are_refused(svc: ServeProcess, clips: ClipServer,
                                                                 folders: dict[str, Path], body: dict, status: int,
                                                                 rule: str, says: str) -> None:
    body = json.loads(json.dumps(body).replace("SECRET", SECRET).replace(
        '"REMOTE"', json.dumps(clips.url("short.mp4", "viewer", SECRET))))
    before = len(svc.ok("GET", "/v1/streams")["items"])
    got, answer = svc.call("POST", "/v1/streams", body)
    assert (got, answer["error"]) == (status, rule), answer
    assert says in answer["detail"] and "\n" not in answer["detail"] and SECRET not in json.dumps(answer)
    assert len(svc.ok("GET", "/v1/streams")["items"]) == before
    assert not (folders["out"] / "n-a.mp4").exists()


def test_a_state_folder_from_before_several_inputs_still_loads(folders: dict[str, Path], tmp_path: Path) -> None:
    # A record as the service wrote it before streams had 'inputs': it loads, shown with its one input.
    state = tmp_path / "old-state"
    state.mkdir()
    old = {"id": "0123456789ab", "kind": "stream", "seq": 7, "input": "rtsp://***@cam/1", "outputs": ["old.mp4"],
           "preset": "live", "overrides": {}, "state": "running", "created_at": 1.0, "started_at": 2.0,
           "finished_at": None, "progress": {}, "report": None, "error": None}
    with sqlite3.connect(state / "serve.sqlite") as db:
        db.executescript("CREATE TABLE runs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, kind TEXT NOT NULL, "
                         "state TEXT NOT NULL, record TEXT NOT NULL);")
        db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?)", (old["id"], 7, "stream", "running", json.dumps(old)))
    s = ServeProcess(input_dir=folders["in"], output_dir=folders["out"], state_dir=state).start()
    try:
        view = s.ok("GET", f"/v1/streams/{old['id']}")
        assert view["inputs"] == [view["input"]] == ["rtsp://***@cam/1"]
        assert view["state"] == "interrupted" and view["outputs"] == ["old.mp4"]
        fresh = s.ok("POST", "/v1/streams", {"inputs": ["short.mp4", "short.mp4"], "outputs": ["o-a.mp4", "o-b.mp4"],
                                             "overwrite": True})
        assert s.wait("stream", fresh["id"])["state"] == "done"
    finally:
        s.kill()
    with sqlite3.connect(state / "serve.sqlite") as db:
        records = {r[0]: json.loads(r[1]) for r in db.execute("SELECT id, record FROM runs")}
    assert records[old["id"]]["inputs"] == ["rtsp://***@cam/1"]
    assert records[fresh["id"]]["inputs"] == ["short.mp4", "short.mp4"]


def test_credentials_never_leave_the_process(svc: ServeProcess, clips: ClipServer, folders: dict[str, Path]) -> None:
    # A job reading over HTTP with basic auth: it runs, and its report shows the URL without them.
    ok = svc.ok("POST", "/v1/jobs", {"input": clips.url("short.mp4", "viewer", SECRET), "output": "cred.mp4",
                                     "overwrite": True})
    ok = svc.wait("job", ok["id"])
    assert ok["state"] == "done", ok
    assert ok["input"] == ok["report"]["input"] == clips.url("short.mp4").replace("http://", "http://***@")
    assert frames(folders["out"] / "cred.mp4") == frames(folders["in"] / "short.mp4")
    # A URL that cannot be opened: its error passes through the report, the API and the log.
    bad = svc.ok("POST", "/v1/jobs", {"input": f"rtsp://viewer:{SECRET}@127.0.0.1:9/none", "output": "never.mp4",
                                      "overrides": {"input.reconnect": False, "input.open_timeout_s": 2}})
    bad = svc.wait("job", bad["id"])
    assert bad["state"] == "failed" and "***@127.0.0.1:9" in bad["input"], bad
    # A stream pushing to a server that is not there, with its key in the URL.
    push = svc.ok("POST", "/v1/streams", {"input": "short.mp4", "outputs": [f"rtmp://pub:{SECRET}@127.0.0.1:9/app/k"]})
    assert push["outputs"] == ["rtmp://***@127.0.0.1:9/app/k"]
    time.sleep(1)
    answers = [svc.call("GET", p)[1] for p in ("/v1/jobs", f"/v1/jobs/{ok['id']}", f"/v1/jobs/{bad['id']}",
                                              "/v1/streams", f"/v1/streams/{push['id']}", "/metrics")]
    if svc.ok("GET", f"/v1/streams/{push['id']}")["state"] in ("starting", "running"):
        answers.append(svc.ok("DELETE", f"/v1/streams/{push['id']}"))
    answers.append(svc.wait("stream", push["id"]))
    for answer in answers:
        assert SECRET not in json.dumps(answer)
    assert SECRET not in svc.log.read_text()


@pytest.mark.parametrize("body, status, rule", [
    ({"input": "../outside/private.mp4", "output": "x.mp4"}, 400, "path_dotdot"),
    ({"input": "short.mp4", "output": "../x.mp4"}, 400, "path_dotdot"),
    ({"input": "ABS_OUTSIDE", "output": "x.mp4"}, 403, "path_outside_folder"),
    ({"input": "short.mp4", "output": "/tmp/x.mp4"}, 403, "path_outside_folder"),
    ({"input": "escape.mp4", "output": "x.mp4"}, 403, "path_outside_folder"),
    ({"input": "short.mp4", "output": "elsewhere/x.mp4"}, 403, "path_outside_folder"),
    ({"input": "missing.mp4", "output": "x.mp4"}, 404, "not_found"),
    ({"input": "ftp://host/clip.mp4", "output": "x.mp4"}, 400, "url_scheme"),
    ({"input": "file:///etc/passwd", "output": "x.mp4"}, 400, "url_scheme"),
    ({"input": "webcam:0", "output": "x.mp4"}, 400, "webcam_job"),
    ({"input": "short.mp4", "output": "rtmp://host/app/key"}, 400, "job_output"),
    ({"input": "short.mp4", "output": "x.mp4", "sources": [{"path": "../outside/private.mp4"}]}, 400, "path_dotdot"),
    ({"input": "short.mp4", "output": "x.mp4", "overrides": {"swap.source": ["/etc/hostname"]}}, 403,
     "setting_names_a_path"),
    ({"input": "short.mp4", "output": "x.mp4", "overrides": {"models.dir": "/"}}, 403, "setting_names_a_path"),
    ({"input": "short.mp4", "output": "x.mp4", "overrides": {"models": {"detector": "/etc/x.onnx"}}}, 403,
     "setting_names_a_path"),
    ({"input": "short.mp4", "output": "x.mp4", "overrides": {"flow.queue_size": "abc"}}, 422, "config_error"),
    ({"input": "short.mp4", "output": "x.mp4", "overrides": {"no.such_key": 1}}, 422, "config_error"),
    ({"input": "short.mp4", "output": "x.mp4", "overrides": {"bad key": 1}}, 422, "config_error"),
    ({"input": "short.mp4", "output": "x.mp4", "preset": "nope"}, 422, "config_error"),
    ({"input": "short.mp4"}, 422, "invalid_request"),
    ({"input": "short.mp4", "output": "x.mp4", "speed": "fast"}, 422, "invalid_request"),
    ({"input": ["short.mp4"], "output": "x.mp4"}, 422, "invalid_request"),
    ({"input": "short.mp4", "output": "short-hidden.mp4"}, 409, "output_exists"),
])
def test_requests_that_break_a_rule_are_refused(svc: ServeProcess, folders: dict[str, Path], body: dict, status: int,
                                                rule: str) -> None:
    if body.get("input") == "ABS_OUTSIDE":
        body = {**body, "input": str(folders["outside"] / "private.mp4")}
    if rule == "output_exists" and not (folders["out"] / "short-hidden.mp4").exists():
        (folders["out"] / "short-hidden.mp4").write_bytes(b"x")
    before = len(svc.ok("GET", "/v1/jobs")["items"])
    got, answer = svc.call("POST", "/v1/jobs", body)
    assert (got, answer["error"]) == (status, rule), answer
    assert answer["detail"] and "Traceback" not in answer["detail"] and "\n" not in answer["detail"]
    assert len(svc.ok("GET", "/v1/jobs")["items"]) == before


def test_malformed_requests_get_a_reason_not_a_500(svc: ServeProcess) -> None:
    cases = [
        ("POST", "/v1/jobs", b"{not json", {}),
        ("POST", "/v1/jobs", b"", {}),
        ("POST", "/v1/jobs", b"[1, 2]", {}),
        ("POST", "/v1/jobs", b'{"input": "short.mp4", "output": "x.mp4"}', {"Content-Type": "text/plain"}),
        ("POST", "/v1/jobs", "\u00ff".encode("latin-1"), {}),
        ("GET", "/v1/jobs/doesnotexist", None, {}),
        ("DELETE", "/v1/streams/doesnotexist", None, {}),
        ("GET", "/v1/nothing", None, {}),
        ("PUT", "/v1/jobs", b"{}", {}),
        ("POST", "/v1/streams", b'{"input": "short.mp4", "outputs": []}', {}),
        ("POST", "/v1/streams", b'{"input": "short.mp4", "outputs": ["gopher://x/y"]}', {}),
    ]
    for method, path, raw, headers in cases:
        status, answer = svc.call(method, path, raw=raw, headers=headers)
        assert 400 <= status < 500, (method, path, raw, status, answer)
        assert isinstance(answer, dict) and answer["error"] and answer["detail"], answer
        assert "Traceback" not in json.dumps(answer)
    assert "Traceback" not in svc.log.read_text()


def test_request_bodies_have_a_size_limit(svc: ServeProcess) -> None:
    big = json.dumps({"input": "short.mp4", "output": "x.mp4", "overrides": {"description": "x" * (2 << 20)}})
    status, answer = svc.call("POST", "/v1/jobs", raw=big.encode())
    assert status == 413 and answer["error"] == "body_too_large"
    # Without a Content-Length (chunked), the limit holds as the body arrives.
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=30)
    chunks = (big[i:i + 65536].encode() for i in range(0, len(big), 65536))
    conn.request("POST", "/v1/jobs", body=chunks, headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"] == "body_too_large"
    conn.close()


def _metrics(svc: ServeProcess) -> dict:
    status, text = svc.call("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_parse_as_prometheus_text(svc: ServeProcess) -> None:
    job = svc.ok("POST", "/v1/jobs", {"input": "short.mp4", "output": "m.mp4", "preset": "anonymize",
                                      "overwrite": True})
    done = svc.wait("job", job["id"])
    assert done["state"] == "done"
    fams = _metrics(svc)
    out = {s.labels["kind"]: s.value for s in fams["facestream_frames_out"].samples if s.name.endswith("_total")}
    assert out["job"] >= done["report"]["frames_out"] > 0
    states = {(s.labels["kind"], s.labels["state"]): s.value for s in fams["facestream_runs"].samples}
    assert states[("job", "done")] >= 1 and states[("job", "running")] == 0
    assert fams["facestream_stage_seconds"].type == "histogram"
    stages = {s.labels["stage"] for s in fams["facestream_stage_seconds"].samples}
    assert {"decoder", "detector", "encoder"} <= stages
    decoder = {s.labels.get("le"): s.value for s in fams["facestream_stage_seconds"].samples
               if s.labels["stage"] == "decoder" and s.labels["kind"] == "job" and s.name.endswith("_bucket")}
    counts = [decoder[le] for le in sorted((k for k in decoder if k != "+Inf"), key=float)] + [decoder["+Inf"]]
    assert counts == sorted(counts) and counts[-1] >= done["report"]["frames_in"]
    assert fams["facestream_jobs_queued"].samples[0].value == 0
    assert "facestream_frame_latency_seconds" in fams


def test_openapi_description(svc: ServeProcess) -> None:
    spec = svc.ok("GET", "/openapi.json")
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert {"post", "get"} <= set(paths["/v1/jobs"]) and {"get", "delete"} <= set(paths["/v1/jobs/{run_id}"])
    assert {"post", "get"} <= set(paths["/v1/streams"]) and "/metrics" in paths and "/healthz" in paths
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "JobRequest" in spec["components"]["schemas"]


def test_non_loopback_bind_needs_a_token(folders: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "9", "--input-dir", str(folders["in"]),
                "--output-dir", str(folders["out"]), "--state-dir", str(tmp_path / "state"),
                env={"FACESTREAM_TOKEN": ""})
    assert r.returncode == 2 and "token" in r.stderr and "Traceback" not in r.stderr
    token = "t0ken-for-tests"
    s = ServeProcess(input_dir=folders["in"], output_dir=folders["out"], state_dir=tmp_path / "state",
                     host="0.0.0.0", env={"FACESTREAM_TOKEN": token})
    s.start()
    try:
        for path in ("/v1/jobs", "/v1/streams", "/metrics", "/v1/jobs/abc"):
            status, answer = s.call("GET", path)
            assert status == 401 and answer["error"] == "token_required", (path, answer)
            status, answer = s.call("GET", path, token="wrong")
            assert status == 401 and answer["error"] == "token_invalid", (path, answer)
            assert s.call("GET", path, token=token)[0] == (404 if path == "/v1/jobs/abc" else 200)
        status, answer = s.call("POST", "/v1/jobs", {"input": "short.mp4", "output": "t.mp4"})
        assert status == 401
        # What only describes the service answers without one.
        assert s.call("GET", "/healthz")[0] == s.call("GET", "/openapi.json")[0] == 200
        assert token not in s.log.read_text()
    finally:
        s.kill()


def test_readme_client_example_runs(svc: ServeProcess, folders: dict[str, Path], tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- serve client example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README: the serve client example is missing"
    code = m.group(1).replace("http://127.0.0.1:8000", svc.url)
    code = code.replace('"street.mp4"', '"short.mp4"').replace('"street-hidden.mp4"', '"readme-hidden.mp4"')
    script = tmp_path / "client.py"
    script.write_text(code)
    import subprocess
    import sys

    env = {**os.environ}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("done"), r.stdout
    assert frames(folders["out"] / "readme-hidden.mp4") == frames(folders["in"] / "short.mp4")


def test_an_unexpected_error_is_clean_json_and_logged(folders: dict[str, Path], tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The real application, with one more route that fails the way a bug would, served by uvicorn
    in a thread: the client gets a JSON 500 without the traceback; the log has it, credentials hidden."""
    import threading

    import uvicorn

    from facestream.serve.app import ServeOptions, create_app
    from tests.conftest import free_port

    guard = create_app(ServeOptions(input_dirs=[str(folders["in"])], output_dir=str(folders["out"]),
                                    state_dir=str(tmp_path / "state")))
    service = guard.app.state.service

    @guard.app.get("/v1/bug")
    async def bug() -> None:
        url = service.secrets.add(f"rtsp://cam:{SECRET}@10.0.0.1/live")
        raise RuntimeError(f"a bug while opening {url.replace('***', 'cam:' + SECRET)}")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(guard, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with caplog.at_level("ERROR", logger="facestream.serve"):
            conn.request("GET", "/v1/bug")
            r = conn.getresponse()
            body = r.read().decode()
            deadline = time.monotonic() + 10  # logged just after the answer went out
            while not (records := [rec for rec in caplog.records if rec.name == "facestream.serve" and rec.exc_info]):
                assert time.monotonic() < deadline, caplog.records
                time.sleep(0.05)
        assert r.status == 500 and json.loads(body) == {
            "error": "internal_error", "detail": "the service failed unexpectedly; the error is in its log"}
        assert records and "RuntimeError" in records[0].exc_text and SECRET not in records[0].exc_text
        assert "rtsp://***@10.0.0.1/live" in records[0].exc_text
        conn.request("GET", "/healthz")  # the service goes on
        assert conn.getresponse().status == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)
