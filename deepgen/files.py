"""Files and folders written so that an interrupted write never leaves a half-written one where a reader looks:
each is written under a hidden name beside its place, then renamed onto it."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from deepgen.errors import DataError, DeepgenError, os_reason

STALE_TMP_S = 24 * 3600  # a hidden folder this old was left by a killed process, not a live one


class WriteRace(Exception):
    """Another process put a different folder in place while this one wrote its own."""


def absolute(path: str | Path, base: Path | None = None) -> Path:
    """`path` with `~` expanded, taken against `base` (the current folder) when relative, `..` and symlinks
    resolved: what a Ray worker, trial or job, which runs in a folder of its own, must be given."""
    return (Path(base or Path.cwd()) / Path(path).expanduser()).resolve()


def hidden_sibling(dest: Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside `dest`, e.g. `.model.tmp-1a2b3c4d` (what a crash may leave; readers skip it)."""
    return dest.parent / f".{dest.name}.{tag}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def writing(dest: Path) -> Iterator[Path]:
    """A hidden path beside `dest` for the block to write a file or a folder into; renamed onto `dest` when the
    block succeeds (an empty folder is replaced), removed when it fails. Parent folders are created."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_sibling(dest)
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def copy_into_place(src: Path, dest: Path) -> None:
    """Copy the folder `src` beside `dest`, then rename it onto `dest` (replacing an older one): a crash
    mid-copy leaves `dest` as it was, and the hidden partial copy is removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_sibling(dest)
    try:
        shutil.copytree(src, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_folder(dest: Path, fill: Callable[[Path], None], same: Callable[[], bool] = lambda: False) -> None:
    """`fill(folder)` writes a hidden sibling folder, which then replaces `dest` (an older `dest` is moved aside
    and removed): readers see the old folder or the new one, never half of one. Where another process renamed
    its folder onto `dest` first, `same()` says whether theirs holds what ours would (then ours is dropped);
    else WriteRace. Hidden folders older than STALE_TMP_S, left by killed writers, are removed first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in [*dest.parent.glob(f".{dest.name}.tmp-*"), *dest.parent.glob(f".{dest.name}.old-*")]:
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = hidden_sibling(dest)
    tmp.mkdir()
    try:
        fill(tmp)
        old = None
        if dest.exists():
            old = hidden_sibling(dest, "old")
            dest.rename(old)
        try:
            tmp.rename(dest)
        except OSError:  # another process swapped its copy in first
            if not same():
                raise WriteRace(str(dest)) from None
            shutil.rmtree(tmp, ignore_errors=True)  # theirs holds the same data
        finally:
            if old is not None:  # the copy this one replaces, whoever's copy is in place now
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- a command's output file: refused before any work, written whole or not at all -------------------------

def check_output(out: Path, *inputs: Path, folder: bool = False, force: bool = False) -> None:
    """Refuse, before any work, an output that would replace an input, or a folder output that is a file or
    already holds files (they would be mixed with, or lost to, the new ones).

    A file output is a new path, or an existing regular file with --force. The output is renamed into
    place, so a symbolic link, a device node (/dev/full) or a pipe there would be replaced by a file
    (as root, the device node itself): those are refused, as is a folder."""
    for src in inputs:
        if out.resolve() == src.resolve():
            raise DeepgenError(f"{out}: the output would replace the input; give another path")
    if out.is_symlink():
        raise DeepgenError(f"{out}: is a symbolic link; give the path of a new file (links are not followed "
                           "or replaced)")
    if out.exists() and not out.is_dir() and not out.is_file():
        raise DeepgenError(f"{out}: is not a regular file (a device, pipe or socket); give the path of a new file")
    if not folder and out.is_file() and not force:
        raise DeepgenError(f"{out}: already exists; add --force to replace it, or give a new path")
    if folder and out.exists() and not out.is_dir():
        raise DeepgenError(f"{out}: is a file; give a new or empty folder for the images")
    if folder and out.is_dir() and any(out.iterdir()):
        raise DeepgenError(f"{out}: the folder is not empty; give a new or empty folder (nothing is overwritten)")
    if not folder and out.is_dir():
        raise DeepgenError(f"{out}: is a folder; give a file name to write")


@contextlib.contextmanager
def writing_output(out: Path) -> Iterator[Path]:
    """`writing`, its failures said in one line: a failed command leaves no half-written output."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be, no permission, ...
        raise DeepgenError(f"{out}: cannot create its folder {out.parent}: {os_reason(e)}") from None
    try:
        with writing(out) as tmp:
            yield tmp
    except OSError as e:  # no room, no permission, ...
        raise DataError(f"{out}: cannot write it: {os_reason(e)}") from None
