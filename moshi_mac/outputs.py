"""Output files, safely: checked before any compute, written as a set, never clobbered.

An `OutputSet` is the files one run makes for one input (the wav, the subtitles, the
JSON, ...):

- `preflight`: before the model loads, every destination folder is made and must be a
  writable folder with room for the set's known size; existing outputs need --force;
  and the set is locked (`flock` on a hidden `.NAME.lock` beside it), so a second run
  writing the same files is refused in one line. The OS drops the lock if the process
  dies, so no stale lock ever blocks a rerun.
- `commit`: every file is written to a hidden temp file first, then all are renamed into
  place together: a full disk leaves no half set. A run that did not finish (interrupted,
  NaN, ...) commits under the partial names instead, `NAME.partial.EXT`
  (`talk-out.partial.wav`, ...), so a complete earlier output is never replaced by a
  partial one, even with --force. A complete commit removes stale partials of the set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

from .errors import MoshiMacError, OutputBusyError, UsageError

PARTIAL = "partial"
SPACE_MARGIN = 1.10  # free space wanted over the estimate
SPACE_SLACK = 1 << 20  # and 1 MiB more


def partial_path(path: Path) -> Path:
    """`talk-out.wav` -> `talk-out.partial.wav`."""
    return path.with_name(f"{path.stem}.{PARTIAL}{path.suffix}")


def temp_path(path: Path) -> Path:
    """A hidden, unique temp file name beside `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _create(tmp: Path) -> None:
    # Created with the process umask applied, as a plain open() would (mkstemp makes 0600).
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success move it onto `path`, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _create(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_error(path: Path, e: BaseException) -> MoshiMacError:
    """One line for a failed write (a full disk, a folder that went away)."""
    text = str(e).strip()
    reason = getattr(e, "strerror", None) or (text.splitlines()[0] if text else type(e).__name__)
    return MoshiMacError(f"cannot write {path} ({reason}); free some disk space or choose "
                         f"another output folder with -o")


def check_folder(folder: Path, what: str = "output folder") -> list[Path]:
    """Make `folder` if needed; it must be a writable folder. One line otherwise.
    Returns the folders it made, deepest first."""
    made = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {folder}: {parent} is a file, not a folder; "
                                 f"choose another path")
            break
        made.append(parent)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {what} {folder} ({e.strerror or e}); "
                         f"choose a writable path") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {folder} is not writable; choose a writable path")
    return made


def check_space(folder: Path, need_bytes: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    need = int(need_bytes * SPACE_MARGIN) + SPACE_SLACK
    if free < need:
        raise UsageError(f"{what} need about {need / 2**20:.1f} MiB in {folder}, which has "
                         f"{free / 2**20:.1f} MiB free; free some space or choose another -o")


class OutputSet:
    """The files of one input (see the module docstring). `paths`: the final names."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None
        self._temps: list[Path] = []
        self._made: list[Path] = []  # folders preflight created, deepest first

    @property
    def partial_paths(self) -> list[Path]:
        return [partial_path(p) for p in self.paths]

    # -- before compute ----------------------------------------------------------------
    def preflight(self, force: bool, need_bytes: int = 0) -> None:
        """Folders made and writable, room for `need_bytes`, no output in the way unless
        `force`, and the set locked against other runs."""
        for p in self.paths:
            if p.is_dir():
                raise UsageError(f"output {p} is a folder; choose another -o")
        folders = sorted({p.parent for p in self.paths})
        for folder in folders:
            self._made += check_folder(folder)
        existing = [p for p in self.paths if p.exists()]
        if existing and not force:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise UsageError(f"{existing[0]} exists{more}; pass --force to overwrite")
        check_space(folders[0], need_bytes, f"the outputs {self.paths[0].name}, ...")
        self.lock()

    def lock(self) -> None:
        import fcntl

        first = self.paths[0]
        lock = first.with_name(f".{first.name}.lock")
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutputBusyError(f"another moshi-mac run (pid {holder}) is writing {first}; "
                                      f"wait for it to finish or choose another -o") from None
            # The holder may have removed the file between our open and our lock: retry.
            if lock.exists() and os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd, self._lock_path = fd, lock

    def release(self) -> None:
        """Drop the lock, and the folders preflight made if nothing was written in them."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None
        for folder in self._made:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        self._made.clear()

    # -- after compute -----------------------------------------------------------------
    def commit(self, writers: dict[Path, Callable[[Path], None]], partial: bool = False) -> list[Path]:
        """Write every file (`writers`: final path -> fn(temp path)) to a temp file, then
        rename them all into place: under the partial names when `partial`. Returns the
        paths written. Nothing is left behind when a write fails."""
        targets = {p: (partial_path(p) if partial else p) for p in writers}
        for target in targets.values():  # a rename onto a folder would fail half-way
            if target.is_dir():
                raise UsageError(f"output {target} is a folder; remove it or choose another "
                                 f"output path")
        staged: list[tuple[Path, Path]] = []
        try:
            for final, write in writers.items():
                tmp = temp_path(final)
                self._temps.append(tmp)
                _create(tmp)
                write(tmp)
                staged.append((tmp, targets[final]))
        except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
            self.discard_temps()
            raise write_error(final, e) from None
        except BaseException:
            self.discard_temps()
            raise
        try:
            for tmp, target in staged:
                os.replace(tmp, target)
        except OSError as e:  # e.g. the folder went away: what was not moved is removed
            self.discard_temps()
            raise write_error(target, e) from None
        self._temps.clear()
        if not partial:
            for p in self.partial_paths:
                with contextlib.suppress(OSError):
                    p.unlink()
        return [t for _, t in staged]

    def discard_temps(self) -> None:
        """Remove temp files of an unfinished commit (also safe from a signal handler)."""
        for tmp in self._temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._temps.clear()
