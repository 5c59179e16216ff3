"""All-or-nothing output folders: every command that writes a folder stages it here.

A folder is written into a hidden sibling (`.NAME.tmp-PID-<8 random hex digits>`, made with `mkdir`, so it gets
the mode any new folder gets), its files and folders are fsynced, and only then is it renamed to
NAME; the parent is fsynced after the rename, so a power loss cannot leave a renamed folder with
empty files. Replacing an existing folder swaps the two atomically (Linux `renameat2`
RENAME_EXCHANGE) and deletes the old one afterwards; where the file system cannot swap, the old
folder is moved aside (`.NAME.old-PID-<hex>`), the new one renamed in, then the old one deleted.
A crash at any point leaves NAME either absent, old or new and complete: siblings left by a dead
process are removed (or, for an old folder whose replacement never arrived, moved back) the next
time anything is written to NAME.

Fault injection for the crash tests: with `VLMMERGE_FAULT_AT=<point>` in the environment the
process kills itself (SIGKILL) when it reaches that point; the points are `FAULT_POINTS`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from vlmmerge.errors import VlmMergeError

FAULT_POINTS = ("staged", "mid-shard", "written", "synced", "aside", "swapped")
_SIBLING = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+")


def fault_point(point: str) -> None:
    """Kill this process with SIGKILL if VLMMERGE_FAULT_AT names `point` (crash tests only)."""
    if os.environ.get("VLMMERGE_FAULT_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; it becomes `out_dir` only if the block succeeds.

    `out_dir` may be absent or an empty folder; a non-empty one needs `overwrite`. On any error
    the staging folder (and any parent folders created for it) is removed and `out_dir` is as
    it was.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    check_output_path(out_dir, overwrite)
    created = _make_parents(out_dir.parent)
    try:
        recover_siblings(out_dir)
        tmp = new_sibling(out_dir, "tmp", create=True)
    except BaseException:
        _remove_created(created)
        raise
    fault_point("staged")
    try:
        yield tmp
        fault_point("written")
        fsync_tree(tmp)
        fault_point("synced")
        publish(tmp, out_dir)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        if isinstance(exc, OSError):  # disk full, quota, I/O error: name the output, not the staging file
            where = f" (writing {Path(exc.filename).name})" if exc.filename else ""
            raise VlmMergeError(f"cannot write output folder {out_dir}: {exc.strerror or exc}{where}") from exc
        raise


def check_output_path(out_dir: Path, overwrite: bool) -> None:
    """Fail, naming the path, if `out_dir` cannot become the output folder."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise VlmMergeError(f"output path {out_dir} exists and is not a folder")
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()):
        raise VlmMergeError(f"output folder {out_dir} already exists and is not empty (pass --overwrite to replace it)")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise VlmMergeError(f"cannot create output folder {out_dir}: {parent} is not a folder")
            break


def publish(tmp: Path, out_dir: Path) -> None:
    """Rename the complete, fsynced `tmp` to `out_dir`, replacing what is there; fsync the parent."""
    try:
        if not out_dir.exists():
            os.rename(tmp, out_dir)
        elif _exchange(tmp, out_dir):
            fault_point("swapped")
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old folder
        else:
            old = new_sibling(out_dir, "old", create=False)
            os.rename(out_dir, old)
            fault_point("aside")
            os.rename(tmp, out_dir)
            fault_point("swapped")
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(out_dir.parent)
    except OSError as exc:
        raise VlmMergeError(f"cannot move the finished output into {out_dir}: {exc.strerror or exc}") from exc


def new_sibling(out_dir: Path, kind: str, create: bool) -> Path:
    """A fresh hidden sibling name of `out_dir` (`kind` "tmp" or "old"), created if asked."""
    path = out_dir.with_name(f".{out_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
    if create:
        try:
            os.mkdir(path)
        except OSError as exc:
            raise VlmMergeError(f"cannot create a folder in {out_dir.parent}: {exc.strerror or exc}") from exc
    return path


def recover_siblings(out_dir: Path) -> None:
    """Clean up after writers of `out_dir` that died: remove their staging folders; put an old
    folder back if its replacement never arrived, else remove it."""
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return
    for entry in sorted(entries, key=lambda p: p.name):
        match = _SIBLING.fullmatch(entry.name)
        if not match or match["name"] != out_dir.name or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out_dir.exists():
            os.rename(entry, out_dir)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, then `folder` itself."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:
            _fsync_dir(Path(root, name))
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # some file systems cannot sync a folder
            raise
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and missing ancestors; the ones created, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except OSError as exc:
            _remove_created(missing[missing.index(path) + 1 :])
            raise VlmMergeError(f"cannot create folder {path}: {exc.strerror or exc}") from exc
    return missing


def _remove_created(created: list[Path]) -> None:
    for path in created:
        with contextlib.suppress(OSError):
            path.rmdir()
