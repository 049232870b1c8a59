"""Packaging: the wheel ships the presets and the embedded model, and setuptools builds it without the
"Package would be ignored" / "absent from the `packages` configuration" warnings (about 250 lines each
time before deltadit.weights.animals.* were listed)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "deltadit", "configs", "export", "runtime")
WARNINGS = ("would be ignored", "absent from the `packages` configuration", "BuildBackendWarning")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of what the build reads (building in place would write build/ into the shared checkout)."""
    dst = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in SOURCES:
        src = ROOT / name
        shutil.copytree(src, dst / name, ignore=ignore) if src.is_dir() else shutil.copy(src, dst / name)
    return dst


def _quiet(output: str) -> None:
    noisy = [line for line in output.splitlines() if any(w in line for w in WARNINGS)]
    assert not noisy, "\n".join(noisy[:5])


def test_wheel_has_the_data_and_builds_without_warnings(source, tmp_path):
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                          str(tmp_path), str(source)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    _quiet(run.stdout + run.stderr)
    (wheel,) = tmp_path.glob("deltadit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.name for p in (ROOT / "configs").glob("*.toml")}
    assert {f"deltadit/configs/{c}" for c in configs} <= names
    weights = {p.relative_to(ROOT).as_posix() for p in (ROOT / "deltadit/weights/animals").rglob("*") if p.is_file()}
    assert weights and weights <= names
    assert "deltadit/runtime/loop.py" in names and "deltadit/export/cli.py" in names


def test_editable_build_without_warnings(source, tmp_path):
    code = f"from setuptools import build_meta; build_meta.build_editable({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    _quiet(run.stdout + run.stderr)
