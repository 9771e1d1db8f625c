"""Swap, anonymise and analyze through the command line, on clips of real faces."""

import json

import av
import cv2
import numpy as np
import pytest
import torch

from facestream.scenes import GROUP_FACES, load_photo, people_scene, turning_scene
from facestream.facelib.models.builtin_pack import DlibDetector
from tests import modelgen
from tests.conftest import run_cli
from tests.media import probe


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("swapcli")
    truth = people_scene(d / "people.mp4")
    group = load_photo("group")
    cv2.imwrite(str(d / "astronaut.png"), cv2.cvtColor(load_photo("astronaut"), cv2.COLOR_RGB2BGR))
    for name, k in (("rachel", 0), ("chandler", 2), ("monica", 4)):
        x1, y1, x2, y2 = (int(v) for v in GROUP_FACES[k])
        pad = x2 - x1
        crop = group[max(0, y1 - pad):y2 + pad, max(0, x1 - pad):x2 + pad]
        cv2.imwrite(str(d / f"{name}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return d, truth


def frames_of(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_frames_without_a_selected_face_come_out_unchanged(scene, tmp_path):
    d, truth = scene
    plain, swapped = tmp_path / "plain.mp4", tmp_path / "swapped.mp4"
    # Lossless encoding (crf 0): a frame left alone must come out bit for bit as in a plain run.
    assert run_cli("run", str(d / "people.mp4"), "-o", str(plain), "-q", "--set", "output.crf=0").returncode == 0
    proc = run_cli("run", str(d / "people.mp4"), "-o", str(swapped), "--source", str(d / "monica.png"), "-q",
                   "--set", "output.crf=0",
                   "--set", "select.mode=reference", "--set", f"select.references=[{d / 'rachel.png'}]",
                   "--stats", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["stages"]["generator"]["faces"] > 20
    a, b = frames_of(plain), frames_of(swapped)
    assert len(a) == len(b) == 150
    # people_scene: rachel is off stage from 55 % to 75 % of the clip; a few frames either side she
    # is partly in view (still detected, or coasting).
    absent = [i for i in range(150) if 0.58 <= i / 150 < 0.74]
    present = [i for i, names in enumerate(truth.frames) if "rachel" in [n for n, _ in names]][5:]
    assert len(present) > 50
    for i in absent:
        assert np.array_equal(a[i], b[i]), i
    changed = []
    for i in present:
        x1, y1, x2, y2 = (int(v) for v in dict(truth.frames[i])["rachel"])
        changed.append(np.abs(a[i][y1:y2, x1:x2].astype(int) - b[i][y1:y2, x1:x2].astype(int)).mean())
    assert np.median(changed) > 5.0  # her face was replaced
    p = probe(swapped)
    assert p.audio_streams == ["aac"] and p.audio_duration == pytest.approx(probe(plain).audio_duration, abs=0.03)
    assert "synthetically altered by facestream" in p.metadata["comment"]
    assert "builtin" in p.metadata["synthetic_media"]


def _on_people(boxes, people):
    """Detections lying on one of the scene's faces (IoU > 0.3)."""
    hits = 0
    for b in boxes:
        for _, g in people:
            ix = max(0, min(b[2], g[2]) - max(b[0], g[0]))
            iy = max(0, min(b[3], g[3]) - max(b[1], g[1]))
            inter = ix * iy
            hits += inter / ((b[2] - b[0]) * (b[3] - b[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter) > 0.3
    return hits


def test_anonymize_preset_leaves_no_detectable_face(scene, tmp_path):
    d, truth = scene
    out = tmp_path / "anon.mp4"
    proc = run_cli("run", str(d / "people.mp4"), "-o", str(out), "--preset", "anonymize", "-q")
    assert proc.returncode == 0, proc.stderr
    original, hidden = frames_of(d / "people.mp4"), frames_of(out)
    # The builtin detector, as the pipeline runs it on every frame and more sensitive (upsampled,
    # lower threshold) on every fifth: no face of the scene's people is found. Detections that lie
    # on none of them are counted apart: HOG also answers, at large scales, to pairs of blurred
    # blobs (two blurred faces side by side, blurred faces of the background photo).
    for detector, step in ((DlibDetector(), 1), (DlibDetector(upsample=1, score_threshold=0.3), 5)):
        before = after = elsewhere = 0
        for i in range(0, len(original), step):
            before += _on_people(detector.detect([torch.from_numpy(original[i])])[0].boxes, truth.frames[i])
            found = detector.detect([torch.from_numpy(hidden[i])])[0].boxes
            hits = _on_people(found, truth.frames[i])
            after += hits
            elsewhere += len(found) - hits
        print(f"\nanonymised: faces on people {before} -> {after}; other detections in the output {elsewhere}")
        assert before >= 50 // step and after == 0
    assert "anonymised" in probe(out).metadata["comment"]


def test_anonymize_everyone_but_the_reference(scene, tmp_path):
    d, truth = scene
    faces = tmp_path / "faces.jsonl"
    proc = run_cli("run", str(d / "people.mp4"), "-o", str(tmp_path / "o.mp4"), "--preset", "anonymize", "-q",
                   "--set", "select.mode=reference", "--set", f"select.references=[{d / 'astronaut.png'}]",
                   "--set", "select.exclude=true", "--faces-jsonl", str(faces))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in faces.read_text().splitlines()]
    decided = [(f["box"], f["identity"]) for line in lines[20:40] for f in line["faces"]]
    astro = [i for b, i in decided if b[0] < 320 and b[1] < 200]  # she is on the left, high, early on
    others = [i for b, i in decided if b[0] > 400]
    assert astro and all(i is None for i in astro)
    assert others and all(i == "anonymize" for i in others)


def test_map_gives_each_person_their_own_source(scene, tmp_path):
    d, truth = scene
    faces = tmp_path / "faces.jsonl"
    proc = run_cli("run", str(d / "people.mp4"), "-o", str(tmp_path / "o.mp4"), "-q", "--faces-jsonl", str(faces),
                   "--map", f"{d / 'astronaut.png'}={d / 'monica.png'}", "--map", f"{d / 'chandler.png'}={d / 'rachel.png'}",
                   "--stats", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in faces.read_text().splitlines()]
    by_person = {"astronaut": set(), "chandler": set(), "rachel": set()}
    for line, gt in zip(lines[5:], truth.frames[5:]):
        for f in line["faces"]:
            for name, box in gt:
                if abs(f["box"][0] - box[0]) < 20 and abs(f["box"][1] - box[1]) < 20:
                    by_person[name].add(f["identity"])
    assert by_person["astronaut"] == {"astronaut->monica"}
    assert by_person["chandler"] == {"chandler->rachel"}
    assert by_person["rachel"] == {None}


def test_insightface_pack_swap_with_provenance_and_watermark(scene, tmp_path):
    d, _ = scene
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    modelgen.make_scrfd(pack / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_arcface(pack / "w600k_r50.onnx", seed=4)
    modelgen.make_inswapper(pack / "inswapper_128.onnx", scale="tiny", seed=6)
    out = tmp_path / "out.mkv"
    proc = run_cli("run", str(d / "people.mp4"), "-o", str(out), "--source", str(d / "astronaut.png"), "-q",
                   "--set", "models.pack=insightface", "--set", f"models.dir={pack}", "--set", "detector.max_faces=2",
                   "--set", "output.watermark=AI-generated", "--set", "input.end=1", "--stats", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["stages"]["generator"]["kind"] == "inswapper" and stats["stages"]["generator"]["faces"] >= 25
    meta = probe(out).metadata
    assert "inswapper_128.onnx" in meta["COMMENT" if "COMMENT" in meta else "comment"]
    last = frames_of(out)[-1]
    corner = last[-25:, -140:]
    assert corner.min() < 80 and corner.max() > 200


def test_missing_swapper_and_source_errors_are_one_line(scene, tmp_path):
    d, _ = scene
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    modelgen.make_scrfd(pack / "det_10g.onnx", scale="tiny", seed=1)
    modelgen.make_arcface(pack / "w600k_r50.onnx", seed=4)
    cases = [
        (["--source", str(d / "astronaut.png"), "--set", "models.pack=insightface", "--set", f"models.dir={pack}"],
         "swapper model inswapper_128.onnx or inswapper_128_fp16.onnx (pack buffalo_l) not found; looked in:"),
        (["--source", str(tmp_path / "nobody.png")], "image not found"),
        (["--preset", "swap"], "swapping needs a source face"),
        (["--map", "just-one-side"], "--map takes TARGET=SOURCE"),
    ]
    for extra, words in cases:
        out = tmp_path / "out.mp4"
        proc = run_cli("run", str(d / "people.mp4"), "-o", str(out), "-q", *extra, env={"HOME": str(tmp_path)})
        errors = [x for x in proc.stderr.splitlines() if x.startswith("facestream: error:")]
        assert proc.returncode != 0 and len(errors) == 1 and words in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()


def test_analyze_draws_on_the_faces(scene, tmp_path):
    d, _ = scene
    out = tmp_path / "drawn.mp4"
    assert run_cli("run", str(d / "people.mp4"), "-o", str(out), "--preset", "analyze", "-q", "--set", "input.end=1").returncode == 0
    a, b = frames_of(d / "people.mp4")[:25], frames_of(out)
    diff = np.abs(a[10].astype(int) - b[10].astype(int)).max(axis=2) > 60
    assert diff.mean() > 0.002  # boxes, points and labels
    assert diff[:, :40].mean() < 0.001  # and nothing at the empty left edge


def _changed_regions(a: np.ndarray, b: np.ndarray, *, level: int = 25, min_area: int = 40) -> list[tuple[int, int]]:
    """Width and height of each region where two frames differ visibly."""
    diff = (np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > level).astype(np.uint8)
    diff = cv2.morphologyEx(diff, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(diff)
    return [(int(stats[k, 2]), int(stats[k, 3])) for k in range(1, n) if stats[k, 4] >= min_area]


def test_the_demo_changes_faces_at_their_own_size(tmp_path):
    """The demo scene (640x360): every face in it is about 73 px. dlib's HOG also finds the
    dark-haired woman's head as a 150 px "face" from frame 90; it must not be painted over, and no
    changed region may be much larger than a face."""
    from facestream.scenes import demo_scene, photo_path

    clip = tmp_path / "demo.mp4"
    demo_scene(clip, seconds=4.8)
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    proc = run_cli("run", str(clip), "-o", str(out), "--preset", "demo", "--source", str(photo_path("astronaut")),
                   "--set", "output.watermark=null", "-q", "--stats", str(stats), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(stats.read_text())["stages"]["generator"]["implausible_skipped"] > 0
    src, got = frames_of(clip), frames_of(out)
    assert len(src) == len(got) == 120
    largest = max(max(w, h) for a, b in zip(src[80:], got[80:], strict=True) for w, h in _changed_regions(a, b))
    print(f"largest changed region: {largest} px")
    assert 40 < largest <= 110, "faces were swapped, and only at face size"


@pytest.fixture(scope="module")
def turning(tmp_path_factory):
    d = tmp_path_factory.mktemp("turning")
    return d / "turning.mp4", turning_scene(d / "turning.mp4")


def _allowed(truth, i: int, preset: str, shape, seen) -> np.ndarray:
    """Where a run may change frame ``i``: each true face grown by half its size (a swap's mask
    covers the landmarks' hull, the forehead above it and a feather). ``anonymize`` hides more, by
    design: a face for a second after it was last in view (``coast_frames: 25``; also behind
    someone or turned away), and whatever its eager detector saw in that second (``seen``: boxes
    per frame, grown by a quarter for the blur's edge), the scene's lures included."""
    boxes = [(b, 0.5) for _, b in truth.frames[i]]
    if preset == "anonymize":
        for j in range(max(0, i - truth.fps), i + 1):
            boxes += [(b, 0.5) for _, b in truth.frames[j]] + [(b, 0.5) for _, b in truth.hidden[j]]
            boxes += [(b, 0.25) for b in seen[j]]
        boxes += [(b, 0.25) for b in truth.lures[i]]
    allowed = np.zeros(shape, bool)
    for (x1, y1, x2, y2), grow in boxes:
        m = grow * max(x2 - x1, y2 - y1)
        allowed[max(0, int(y1 - m)):int(y2 + m) + 1, max(0, int(x1 - m)):int(x2 + m) + 1] = True
    return allowed


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["people", "turning"])
@pytest.mark.parametrize("preset", ["swap", "anonymize"])
def test_pixels_change_only_where_faces_are(scene, turning, tmp_path, preset, which):
    """Two scenes whose true face boxes are known: ``people`` (three real faces that move, cross,
    leave and come back) and ``turning`` (a face that turns away and back, a walking face, and a
    patch of coins that dlib's HOG takes for a face). Against a plain run (both lossless), no pixel
    away from where the preset may act (see ``_allowed``) changes visibly, no changed region is much
    larger than a face, and a swap leaves the coins alone."""
    clip, truth = (scene[0] / "people.mp4", scene[1]) if which == "people" else turning
    plain, changed = tmp_path / "plain.mkv", tmp_path / "changed.mkv"
    lossless = ["--set", "output.crf=0", "--set", "output.codec=libx264", "-q"]
    assert run_cli("run", str(clip), "-o", str(plain), *lossless).returncode == 0
    # The turning face is the astronaut's: another person's face as the source, so a swap shows.
    source = scene[0] / ("astronaut.png" if which == "people" else "monica.png")
    extra = ["--source", str(source)] if preset == "swap" else []
    faces = tmp_path / "faces.jsonl"
    proc = run_cli("run", str(clip), "-o", str(changed), "--preset", preset, *extra, *lossless,
                   "--faces-jsonl", str(faces), timeout=300)
    assert proc.returncode == 0, proc.stderr
    seen = [[f["box"] for f in json.loads(line)["faces"] if not f.get("predicted")]
            for line in faces.read_text().splitlines()]
    a, b = frames_of(plain), frames_of(changed)
    assert len(a) == len(b) == len(truth.frames) == len(seen)
    outside, largest, touched, lure_changed, false_area = 0, 0, 0, 0, 0.0
    for i, (fa, fb) in enumerate(zip(a, b, strict=True)):
        visible = np.abs(fa.astype(np.int16) - fb.astype(np.int16)).max(axis=2) > 25
        outside += int((visible & ~_allowed(truth, i, preset, visible.shape, seen)).sum())
        known = [g for _, g in truth.frames[i] + truth.hidden[i]] + list(truth.lures[i])
        false_area += sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in seen[i]
                          if all(_iou((x1, y1, x2, y2), g) < 0.2 for g in known))
        touched += bool(visible.any())
        largest = max([largest] + [max(w, h) for w, h in _changed_regions(fa, fb)])
        for x1, y1, x2, y2 in truth.lures[i]:
            lure_changed += int(visible[int(y1):int(y2), int(x1):int(x2)].sum())
    area = a[0].shape[0] * a[0].shape[1] * len(a)
    print(f"{which}/{preset}: {touched} of {len(a)} frames changed; {outside} px changed away from where it "
          f"may act; largest changed region {largest} px; {lure_changed} px of the lure changed; "
          f"detections on no face or lure: {false_area / area:.2%} of the frames' area")
    assert touched > len(a) // 2, "faces were changed"
    assert outside <= 0.0002 * area
    if preset == "swap":
        assert largest <= 1.8 * 90  # the scenes' faces are 90 px
        assert lure_changed == 0, "a false detection is not swapped"
    else:
        # Anonymising may hide what only looks like a face, but its detector's false finds stay rare.
        assert false_area <= 0.01 * area
    if which == "turning":
        # The turned face is changed again once she looks back (65 % of the clip on).
        back = [i for i in range(len(a)) if i / len(a) >= 0.7]
        box = [dict(truth.frames[i])["astronaut"] for i in back]
        moved = [np.abs(a[i][int(y1):int(y2), int(x1):int(x2)].astype(int) - b[i][int(y1):int(y2), int(x1):int(x2)]
                        .astype(int)).mean() for i, (x1, y1, x2, y2) in zip(back, box)]
        assert np.median(moved) > 5.0
