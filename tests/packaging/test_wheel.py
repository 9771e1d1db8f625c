"""The installed package: one import package, ``facestream``, that lives beside distributions which
install top-level ``config`` and ``pipeline`` packages, and works from a folder holding ``config.py``
and ``pipeline.py``.

The wheel is built from this checkout and installed into a new virtualenv (no dependencies
downloaded: the test's own environment lends them through a path entry, without its editable
facestream), next to two tiny distributions the test builds itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(cmd: list[str], *, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _tiny_distribution(root: Path, name: str, package: str) -> Path:
    """A distribution installing a top-level package ``package`` with one marker module."""
    src = root / name
    (src / package).mkdir(parents=True)
    (src / package / "__init__.py").write_text(f"OWNER = {name!r}\n")
    (src / package / "marker.py").write_text(f"# belongs to {name}\n")
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "1.0"

        [tool.setuptools]
        packages = ["{package}"]
    """))
    return src


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("wheel")
    wheels = work / "wheels"
    py = sys.executable
    # Built from a copy of the sources: setuptools leaves a build/ folder beside what it builds.
    source = work / "facestream-src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tests", "bench", ".cache"))
    _run([py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], cwd=work)
    for name, package in (("other-config", "config"), ("other-pipeline", "pipeline")):
        _run([py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
              str(_tiny_distribution(work / "src", name, package))], cwd=work)
    venv = work / "venv"
    _run([py, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    vpy = venv / "bin" / "python"
    purelib = Path(_run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work).strip())
    # The dependencies (torch, av, ...) come from this environment: a plain path entry, processed
    # after the venv's own site-packages, and without this environment's .pth files (so without its
    # editable facestream).
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    others = sorted(wheels.glob("other_*.whl"))
    ours = next(wheels.glob("facestream-*.whl"))
    # The other distributions first, then facestream: pip would silently overwrite shared files.
    _run([py, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index", *map(str, others)], cwd=work)
    before = {pkg: _tree_digest(purelib / pkg) for pkg in ("config", "pipeline")}
    _run([py, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index", str(ours)], cwd=work)
    return {"work": work, "venv": venv, "python": vpy, "purelib": purelib, "digests": before}  # type: ignore[dict-item]


def test_only_facestream_lands_in_site_packages(installed):
    purelib = installed["purelib"]
    record = next(purelib.glob("facestream-*.dist-info")) / "RECORD"
    top = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines() if line}
    # Besides its package and dist-info, only the console script (outside site-packages).
    assert {t for t in top if not t.endswith(".dist-info")} == {"facestream", ".."}, top
    assert all(line.startswith(("facestream/", "facestream-", "../../../bin/facestream,"))
               for line in record.read_text().splitlines() if line)
    assert (purelib / "facestream" / "pipeline" / "runner.py").is_file()
    assert (purelib / "facestream" / "stages" / "decoder.py").is_file()
    assert (purelib / "facestream" / "facelib" / "tracking" / "bytetrack.py").is_file()
    assert (purelib / "facestream" / "config" / "swap.yaml").is_file()
    for pkg in ("config", "pipeline"):
        assert _tree_digest(purelib / pkg) == installed["digests"][pkg], f"facestream changed the other {pkg}"


def test_commands_and_the_python_api_run_from_the_wheel(installed, clip):
    vpy, work = installed["python"], installed["work"]
    src = clip("wheel.mp4", seconds=1.0, size=(160, 120))
    decoys = work / "decoys"
    decoys.mkdir()
    (decoys / "config.py").write_text("raise ImportError('the decoy config.py')\n")
    (decoys / "pipeline.py").write_text("raise ImportError('the decoy pipeline.py')\n")
    for cwd, expected in ((work, "other-config other-pipeline"), (decoys, "the decoy config.py the decoy pipeline.py")):
        out = _run([str(vpy), "-m", "facestream", "presets"], cwd=cwd)
        assert "anonymize" in out and "offline" in out
        target = cwd / "out.mp4"
        _run([str(vpy), "-m", "facestream", "run", str(src), "-o", str(target), "-q"], cwd=cwd)
        assert target.stat().st_size > 0
        # A script in that folder: its folder comes first on sys.path, as a user's script's does.
        script = cwd / "use_api.py"
        script.write_text(textwrap.dedent(f"""
            import json
            import facestream

            report = facestream.run({str(src)!r}, {str(cwd / "api.mkv")!r}, facestream.load_settings(preset="offline"))
            seen = []
            for name in ("config", "pipeline"):
                try:
                    seen.append(__import__(name).OWNER)
                except ImportError as exc:
                    seen.append(str(exc))
            print(json.dumps([report.status, report.stats["frames_out"], facestream.__file__, " ".join(seen)]))
        """))
        status, frames, where, others = json.loads(_run([str(vpy), str(script)], cwd=cwd).splitlines()[-1])
        assert status == "ok" and frames == 25
        assert where.startswith(str(installed["purelib"])), where
        assert others == expected
