"""Who owns what around the export's output folder ``OUT``: the rules that keep user data safe.

    OUT/           the bundle. Replaced only when it is a deltadit bundle and ``force`` is given; an
                   empty folder may be used; anything else is refused and left untouched.
    OUT.partial/   where the export writes. Ours only when it holds MARKER, a JSON list of every path
                   pattern the export claimed *before* writing it; a file nobody claimed was put there by
                   someone else and is never published or deleted.
    OUT.old/       the old bundle while a new one replaces it (marked too); removed once the new one is
                   in place, restored if the export stops before.
    OUT.lock       one export per OUT at a time (flock); holds the writer's pid; removed on release.

Use: ``with output_folder(out, force=..., source=...) as target:`` write into ``target.work`` (claim
first), then ``target.publish()``. On any exception (KeyboardInterrupt included) our ``OUT.partial`` is
removed unless it holds finished segments a re-run reuses; the exception gets a note saying which.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from deltadit.bundle import MANIFEST, write_json_atomic
from deltadit.console import say
from deltadit.errors import DeltaDiTError

MARKER = ".deltadit-export"  # in OUT.partial/ and OUT.old/: {"role": ..., "claims": [...]}
STAGES_FILE = "stages.json"  # in OUT.partial/: finished segment exports, their keys and files
_OWN = (MARKER, MARKER + ".tmp")  # write_json_atomic's temporary name
_SHOW = 5  # foreign files named in an error


def is_bundle(path: Path) -> bool:
    """A deltadit bundle: a folder whose manifest.json is a JSON object with a format_version."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest


def read_marker(folder: Path, role: str) -> dict | None:
    """The marker of ``folder`` if it is ours in ``role`` ("partial" or "old"), else None."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("role") == role else None


def resolve_out(out: str | Path, source: str | None = None) -> Path:
    """``out`` as an absolute path (symlinks resolved), refused where replacing it could lose data: the
    filesystem root, the current folder or one above it (the folder is renamed away on replace), and a
    folder overlapping ``source`` (a local weights folder)."""
    path = Path(out).expanduser().resolve()
    if path.parent == path:
        raise DeltaDiTError(f"--out | {out} is the filesystem root. Expected: a new folder such as bundles/NAME.")
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise DeltaDiTError(f"--out | {out} is the current folder or one above it ({path}); a bundle folder is renamed "
                            "when it is replaced. Expected: a new folder such as bundles/NAME.")
    if source and Path(source).is_dir():
        src = Path(source).resolve()
        if path == src or src in path.parents or path in src.parents:
            raise DeltaDiTError(f"--out | {path} overlaps the weights folder {src}. Expected: an --out outside the "
                                "weights folder (and not containing it).")
    return path


class Lock:
    """An exclusive, non-blocking ``flock`` on ``path``; the file holds the owner's pid and is removed on
    release. A waiter may lock a file the owner has just unlinked: it then compares the locked file's
    inode with the path's and retries on the new file."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, out: Path) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise DeltaDiTError(f"--out | cannot create {self.path} ({e.strerror}). Expected: an --out in a "
                                    "folder you can write to.") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise DeltaDiTError(f"--out | another export is writing {out} (pid {pid}). Expected: wait for it to "
                                    "finish, or choose another --out.") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its owner unlinked on release; lock the current one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: a waiter then sees another inode and retries
        os.close(self.fd)
        self.fd = None


@dataclass
class Output:
    """The output folder of one export. ``work`` is where it writes; ``segments`` (the split's segment
    count, set by the pipeline) only words the message when a failed export keeps ``work``."""

    out: Path
    force: bool = False
    segments: int | None = None
    claims: list[str] = field(default_factory=list)
    published: bool = False

    @property
    def work(self) -> Path:
        return self.out.with_name(self.out.name + ".partial")

    @property
    def old(self) -> Path:
        return self.out.with_name(self.out.name + ".old")

    @property
    def lock(self) -> Path:
        return self.out.with_name(self.out.name + ".lock")

    # -- before any work ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Check OUT, OUT.old and OUT.partial and adopt or create ``work``; refuse, touching nothing,
        where any of them holds data that is not ours."""
        self._recover_old()
        if self.out.exists():
            self._check_replaceable()
        if not self.work.exists():
            self.work.mkdir(parents=True)
            self.claims = []
            self._write_marker()
            return
        marker = read_marker(self.work, "partial") if self.work.is_dir() else None
        if marker is None:
            raise DeltaDiTError(f"{self.work} | exists and was not made by deltadit-export (no {MARKER} in it); it "
                                "was not touched. Expected: move it away, then re-run.")
        self.claims = [str(c) for c in marker.get("claims", [])]
        self._refuse_foreign("was not touched")

    def _recover_old(self) -> None:
        """An OUT.old of ours is the old bundle of an export that stopped while replacing it: put it back
        when OUT is missing, else (the new bundle made it) finish removing it."""
        if not self.old.is_dir() or read_marker(self.old, "old") is None:
            return
        if self.out.exists():
            shutil.rmtree(self.old)
            return
        self.old.rename(self.out)
        (self.out / MARKER).unlink(missing_ok=True)
        say(f"restored {self.out} from {self.old} (an earlier export stopped while replacing it)")

    def _check_replaceable(self) -> None:
        out = self.out
        if not out.is_dir():
            raise DeltaDiTError(f"--out | {out} exists and is not a folder. Expected: a new or empty folder, or an "
                                "existing bundle with --force.")
        if is_bundle(out):
            if not self.force:
                raise DeltaDiTError(f"--out | {out} is already a deltadit bundle. Expected: --force to replace it, "
                                    "or another --out.")
            if self.old.exists():
                raise DeltaDiTError(f"{self.old} | exists and was not made by deltadit-export; the old bundle is kept "
                                    "there until the new one is in place. Expected: move it away, then re-run.")
        elif any(out.iterdir()):
            raise DeltaDiTError(f"--out | {out} exists and is not a deltadit bundle (no {MANIFEST} with a format_version); "
                                "nothing was changed. Expected: a new or empty folder, or move its files away.")

    # -- while writing ---------------------------------------------------------------------------------
    def claim(self, *patterns: str) -> None:
        """Record paths (relative to ``work``, fnmatch patterns) as ours *before* writing them."""
        new = [p for p in patterns if p not in self.claims]
        if new:
            self.claims += new
            self._write_marker()

    def ours(self, rel: str) -> bool:
        return rel in _OWN or any(fnmatch.fnmatchcase(rel, p) for p in self.claims)

    def foreign(self) -> list[str]:
        """Files (and links) in ``work`` that the export did not claim, relative, sorted."""
        found = []
        for root, dirs, files in os.walk(self.work):
            links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
            dirs[:] = [d for d in dirs if d not in links]
            for name in files + links:
                rel = os.path.relpath(os.path.join(root, name), self.work).replace(os.sep, "/")
                if not self.ours(rel):
                    found.append(rel)
        return sorted(found)

    def _refuse_foreign(self, done: str) -> None:
        found = self.foreign()
        if found:
            more = f" and {len(found) - _SHOW} more" if len(found) > _SHOW else ""
            raise DeltaDiTError(f"{self.work} | holds files the export did not write: {', '.join(found[:_SHOW])}{more}; "
                                f"it {done}. Expected: move them (or the folder) away, then re-run.")

    def _write_marker(self) -> None:
        write_json_atomic(self.work / MARKER, {"role": "partial", "tool": "deltadit-export", "claims": self.claims})

    # -- the last step ---------------------------------------------------------------------------------
    def publish(self) -> None:
        """Rename ``work`` to OUT. An old bundle at OUT goes to OUT.old first and is removed only once the
        new one is in place; if the rename fails it is put back."""
        self._refuse_foreign("was not published")
        out, old = self.out, self.old
        if out.exists():
            self._check_replaceable()  # it may have changed during the export
        if is_bundle(out):
            write_json_atomic(out / MARKER, {"role": "old", "tool": "deltadit-export"})
            out.rename(old)
            try:
                self.work.rename(out)
            except BaseException:
                old.rename(out)
                (out / MARKER).unlink(missing_ok=True)
                raise
            shutil.rmtree(old)
        else:
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            self.work.rename(out)
        self.published = True
        for name in (STAGES_FILE, MARKER):  # kept in work until here: a failed rename leaves it resumable
            (out / name).unlink(missing_ok=True)

    # -- on failure ------------------------------------------------------------------------------------
    def finished(self) -> int:
        """Segments in ``work`` whose export finished (stages.json lists them and their files exist)."""
        try:
            stages = json.loads((self.work / STAGES_FILE).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return 0
        return sum(all((self.work / f["path"]).is_file() for f in s.get("files", [])) for s in stages.values())

    def abandon(self) -> str:
        """After a failure: keep ``work`` when a re-run can reuse finished segments, else remove what we
        wrote there. Returns what was done, for the error message."""
        if self.published or not self.work.is_dir():
            return ""
        (self.work / MANIFEST).unlink(missing_ok=True)  # a kept .partial must never load as a bundle
        k = self.finished()
        if k:
            of = f" of {self.segments}" if self.segments else ""
            return f"kept {self.work} ({k}{of} segments exported): re-run the same command to resume"
        for root, dirs, files in os.walk(self.work, topdown=False):
            for name in files:
                path = os.path.join(root, name)
                if self.ours(os.path.relpath(path, self.work).replace(os.sep, "/")):
                    os.unlink(path)
            for name in dirs:
                path = os.path.join(root, name)
                if not os.path.islink(path) and not os.listdir(path):
                    os.rmdir(path)
        if any(self.work.iterdir()):
            return f"kept {self.work}: it holds files the export did not write ({', '.join(self.foreign()[:_SHOW])})"
        self.work.rmdir()
        return f"removed {self.work}"


@contextmanager
def output_folder(out: str | Path, *, force: bool = False, source: str | None = None) -> Iterator[Output]:
    """Lock OUT, check who owns what (refusing before anything is touched), and yield the :class:`Output`
    to write into. On an exception, ``work`` is cleaned up (see :meth:`Output.abandon`) and the exception
    carries a note saying what happened to it. source: the local weights folder, if any (refused overlap)."""
    target = Output(resolve_out(out, source), force)
    target.out.parent.mkdir(parents=True, exist_ok=True)
    lock = Lock(target.lock)
    lock.acquire(target.out)
    try:
        target.prepare()
        try:
            yield target
        except BaseException as e:
            note = target.abandon()
            if note:
                e.add_note(note)
            raise
    finally:
        lock.release()
