"""What an export may touch around its --out (export/publish.py): it never deletes or publishes a file it
did not write, replaces only a bundle and only with --force, keeps the old bundle until the new one is in
place, lets one export at a time write a folder, and cleans up after a failure."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from deltadit import runtime
from deltadit.errors import DeltaDiTError
from deltadit.export import publish
from deltadit.export.pipeline import export_bundle
from deltadit.export.publish import MARKER, Lock, output_folder, resolve_out
from deltadit.plan import build_plan
from tests.export.test_bundle import BLOCKS, STEPS, tiny_preset
from tests.export.test_export_cli import one_error_line, run_cli, write_tiny_toml

SEGMENTS = ["head", "blocks_00_02", "blocks_02_04", "blocks_04_06", "tail"]  # of the tiny DiT preset


def loads(out: Path) -> dict:
    """The manifest of a bundle that loads (every file present, every hash right)."""
    runtime.load(out)
    return json.loads((out / "manifest.json").read_text())


def listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def export(tmp_path, capsys):
    """export(out, *flags) -> (exit code, stdout, stderr) of deltadit-export on the tiny DiT preset."""
    toml = write_tiny_toml(tmp_path)
    return lambda out, *flags: run_cli(capsys, "--model", toml, "--random-init", "--out", out, *flags)


def test_folder_that_is_not_a_bundle_is_refused_untouched(tmp_path, export):
    out = tmp_path / "photos"
    (out / "2024").mkdir(parents=True)
    (out / "2024" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (out / "manifest.json").write_text('{"not": "ours"}')  # a manifest.json without format_version
    before = listing(out)
    code, _, err = export(out)
    assert code == 2 and f"--out | {out} exists and is not a deltadit bundle" in one_error_line(err)
    assert listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "tiny.toml"]  # no .partial, .old, .lock


def test_empty_folder_is_used_and_an_unrelated_old_folder_survives(tmp_path, export):
    out = tmp_path / "b"
    out.mkdir()
    (tmp_path / "b.old").mkdir()
    (tmp_path / "b.old" / "notes.txt").write_text("mine")
    code, _, _ = export(out)
    assert code == 0 and loads(out)["model"]["random_init"]
    assert (tmp_path / "b.old" / "notes.txt").read_text() == "mine" and not (out / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.old", "tiny.toml"]


def test_partial_folder_not_made_by_the_export_is_refused_not_published(tmp_path, export):
    (tmp_path / "b.partial").mkdir()
    (tmp_path / "b.partial" / "draft.txt").write_text("mine")
    code, _, err = export(tmp_path / "b")
    assert code == 2 and f"{tmp_path / 'b.partial'} | exists and was not made by deltadit-export" in one_error_line(err)
    assert "Expected: move it away" in err
    assert not (tmp_path / "b").exists() and listing(tmp_path / "b.partial") == {"draft.txt": b"mine"}


def test_files_the_export_did_not_claim_are_never_published_nor_deleted(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(DeltaDiTError, match=r"holds files the export did not write: onnx/user\.txt; it was not published"):
        with output_folder(out) as target:
            target.claim("onnx/head.onnx", "manifest.json")
            (target.work / "onnx").mkdir()
            (target.work / "onnx" / "head.onnx").write_text("ours")
            (target.work / "onnx" / "user.txt").write_text("theirs")  # dropped in while the export ran
            (target.work / "manifest.json").write_text('{"format_version": 1}')
            target.publish()
    assert not out.exists() and listing(tmp_path / "b.partial") == {"onnx/user.txt": b"theirs"}  # ours removed
    with pytest.raises(DeltaDiTError, match=r"b\.partial \| exists and was not made by deltadit-export"):
        with output_folder(out):
            pass
    (tmp_path / "b.partial" / MARKER).write_text('{"role": "partial", "claims": ["onnx/head.onnx"]}')
    with pytest.raises(DeltaDiTError, match=r"holds files the export did not write: onnx/user\.txt; it was not touched"):
        with output_folder(out):  # ours, but someone added a file: refused before anything is written
            pass
    assert (tmp_path / "b.partial" / "onnx" / "user.txt").read_text() == "theirs"


def test_out_dot_and_dot_dot_are_refused(tmp_path, export, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", ".."):
        code, _, err = export(out)
        assert code == 2 and f"--out | {out} is the current folder or one above it" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml", "work"] and not any((tmp_path / "work").iterdir())


def test_out_that_could_lose_data_is_refused(tmp_path):
    weights = tmp_path / "weights"
    (weights / "transformer").mkdir(parents=True)
    for out, source, message in [
        ("/", None, r"--out \| / is the filesystem root"),
        (weights, str(weights), r"overlaps the weights folder"),
        (weights / "transformer" / "b", str(weights), r"overlaps the weights folder"),
        (tmp_path, str(weights), r"overlaps the weights folder"),
    ]:
        with pytest.raises(DeltaDiTError, match=message):
            resolve_out(out, source)


def test_bundle_is_replaced_only_with_force(tmp_path, export):
    out = tmp_path / "b"
    assert export(out)[0] == 0
    before = listing(out)
    code, _, err = export(out, "--seed", "1")
    assert code == 2 and one_error_line(err) == (f"error: --out | {out} is already a deltadit bundle. Expected: --force "
                                                 "to replace it, or another --out.")
    assert listing(out) == before
    code, out_text, _ = export(out, "--seed", "1", "--force")
    assert code == 0 and loads(out)["model"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "tiny.toml"]


def test_old_bundle_is_kept_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    preset, plan, out = tiny_preset("dit"), build_plan(STEPS, BLOCKS, 3, 12), tmp_path / "b"
    export_bundle(preset, plan, out, random_init=True, progress=False)
    before = listing(out)
    rename = Path.rename

    def fail_publishing(self, target):
        if self.name == "b.partial":  # after b -> b.old
            assert (tmp_path / "b.old" / "manifest.json").is_file() and not out.exists()
            raise OSError("disk unplugged")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", fail_publishing)
    with pytest.raises(OSError, match="disk unplugged") as e:
        export_bundle(preset, plan, out, random_init=True, seed=1, progress=False, force=True)
    monkeypatch.undo()
    assert listing(out) == before and loads(out)["model"]["seed"] == 0  # the old bundle, intact
    assert not (tmp_path / "b.old").exists()
    assert e.value.__notes__ == [f"kept {tmp_path / 'b.partial'} (4 of 4 segments exported): re-run the same command "
                                 "to resume"]
    report = export_bundle(preset, plan, out, random_init=True, seed=1, progress=False, force=True)
    assert report.exported == [] and loads(out)["model"]["seed"] == 1


def test_old_bundle_left_by_a_killed_export_is_restored(tmp_path):
    out, old = tmp_path / "b", tmp_path / "b.old"
    old.mkdir()
    (old / "manifest.json").write_text('{"format_version": 1}')
    (old / MARKER).write_text('{"role": "old"}')

    class Stop(Exception):
        pass

    with pytest.raises(Stop):
        with output_folder(out, force=True):
            assert listing(out) == {"manifest.json": b'{"format_version": 1}'} and not old.exists()
            raise Stop
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # .partial removed, .lock released


def test_second_export_to_the_same_folder_is_refused(tmp_path, export):
    out = tmp_path / "b"
    lock = Lock(tmp_path / "b.lock")
    lock.acquire(out)  # an export in progress
    code, _, err = export(out)
    assert code == 2 and one_error_line(err) == (f"error: --out | another export is writing {out} (pid {os.getpid()}). "
                                                 "Expected: wait for it to finish, or choose another --out.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.lock", "tiny.toml"]
    lock.release()
    assert export(out)[0] == 0 and loads(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "tiny.toml"]


def test_lock_taken_on_a_file_its_owner_just_unlinked_is_retried(tmp_path, monkeypatch):
    path, out = tmp_path / "b.lock", tmp_path / "b"
    first = Lock(path)
    first.acquire(out)
    stale = os.open(path, os.O_RDWR)  # a waiter opened the file before the owner released it
    first.release()
    second = Lock(path)
    second.acquire(out)  # a new file, a new owner
    real_open, opened = os.open, []

    def open_stale_first(*args, **kwargs):
        if not opened:
            opened.append(1)
            return stale
        return real_open(*args, **kwargs)

    monkeypatch.setattr(publish.os, "open", open_stale_first)
    with pytest.raises(DeltaDiTError, match=rf"another export is writing {out} \(pid {os.getpid()}\)"):
        Lock(path).acquire(out)
    second.release()


def test_interrupted_export_is_one_line_and_resumes(tmp_path, export, monkeypatch):
    import deltadit.export.onnx as onnx_stage

    export_segment, calls = onnx_stage.export_segment, []

    def interrupt_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return export_segment(*args, **kwargs)

    monkeypatch.setattr(onnx_stage, "export_segment", interrupt_third)
    code, out, err = export(tmp_path / "b")
    assert code == 130 and out == ""
    assert one_error_line(err) == (f"error: interrupted; kept {tmp_path / 'b.partial'} (2 of 5 segments exported): "
                                   "re-run the same command to resume")
    monkeypatch.undo()
    code, out, _ = export(tmp_path / "b")
    line = next(x for x in out.splitlines() if x.startswith("segments exported: "))
    exported, reused = (part.split(": ")[1].split(", ") for part in line.split("; "))
    # segments are traced smallest first: the two finished before the interrupt are head and tail
    assert code == 0 and reused == ["head", "tail"] and exported == ["blocks_00_02", "blocks_02_04", "blocks_04_06"]


def test_failed_export_without_finished_segments_leaves_nothing(tmp_path, export, monkeypatch):
    import deltadit.export.pipeline as pipeline

    def fail(*args, **kwargs):
        raise DeltaDiTError("segment head | cannot be exported. Expected: a test.")

    monkeypatch.setattr(pipeline, "export_onnx", fail)
    code, _, err = export(tmp_path / "b")
    assert code == 2 and one_error_line(err) == (f"error: segment head | cannot be exported. Expected: a test; removed "
                                                 f"{tmp_path / 'b.partial'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


@pytest.mark.slow
def test_two_processes_exporting_to_one_folder(tmp_path, export):
    out = tmp_path / "b"
    toml = write_tiny_toml(tmp_path)
    first = subprocess.Popen([sys.executable, "-m", "deltadit.export.cli", "--model", str(toml), "--random-init",
                              "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "b.partial").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    code, _, err = export(out)
    first_out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert code == 2 and f"another export is writing {out} (pid {first.pid})" in one_error_line(err)
    assert loads(out)["model"]["random_init"] and first_out.startswith(f"bundle: {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "tiny.toml"]
